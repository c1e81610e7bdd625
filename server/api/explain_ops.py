"""The explanation calls as both APIs make them: the request checks (checks.py), then the
explainer's own forward (explain.py), in turn with the other explanations. gRPC's service
and HTTP's explanation routes only translate shapes around these."""

from __future__ import annotations

from collections.abc import Sequence

from embedsense.model import TextRole
from embedsense.server.api.checks import check_text, check_word
from embedsense.server.api.settings import ServerSettings
from embedsense.server.explain import Explainer, Explanation
from embedsense.server.senses.words import Occurrence


class ExplainOps:
    def __init__(self, explainer: Explainer, settings: ServerSettings) -> None:
        """`explainer`: this process's, or a front end's stand-in for the engine process's
        (frontends/remote.py), which answers `in_turn` alike."""
        self.explainer = explainer
        self.settings = settings

    def _text(self, text: str, field: str = "text") -> str:
        return check_text(text, field, self.settings.max_text_chars)

    async def explain(
        self,
        text: str,
        word: str = "",
        *,
        span: tuple[int, int] | None = None,
        occurrence: int = 0,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        role: TextRole = TextRole.QUERY,
        truncate: bool = False,
        neuron: tuple[int, int] | None = None,
        timeout: float | None = None,
    ) -> Explanation:
        """Explainer.explain's answer; `timeout` (seconds) counts the wait for a turn."""
        return await self.explainer.in_turn(
            "explain", self._text(text), check_word(word), span=span, occurrence=occurrence,
            layers=list(layers) if layers else None, heads=list(heads) if heads else None,
            role=role, truncate=truncate, neuron=neuron, timeout=timeout,
        )  # fmt: skip

    async def compare_layers(
        self,
        text_a: str,
        text_b: str,
        word: str,
        occurrence_a: int = 0,
        occurrence_b: int = 0,
        *,
        span_a: tuple[int, int] | None = None,
        span_b: tuple[int, int] | None = None,
        role: TextRole = TextRole.QUERY,
        truncate: bool = False,
        timeout: float | None = None,
    ) -> tuple[list[float], Occurrence, Occurrence]:
        """Explainer.compare_layers's answer: the cosines and the word's place in each text."""
        return await self.explainer.in_turn(
            "compare_layers", self._text(text_a, "text_a"), self._text(text_b, "text_b"),
            check_word(word), occurrence_a, occurrence_b, role=role, truncate=truncate,
            timeout=timeout, span_a=span_a, span_b=span_b,
        )  # fmt: skip
