"""Word senses over HTTP, beside the collections' REST routes and in the same dialect (errors
{"error": {"message", "code", "param"}}), behind the same API key, body limits and deadline:

    POST   /v1/senses/disambiguate                  which sense a word has in a text
    GET    /v1/inventories                          list the sense inventories
    POST   /v1/inventories                          store one
    GET    /v1/inventories/{name}                   one
    DELETE /v1/inventories/{name}                   delete one
    POST   /v1/collections/{name}/occurrences       a word's occurrences used in a text's sense
    POST   /v1/collections/{name}/senses            a word's senses, found by clustering

Each handler only translates shapes: the work is sense_ops.py's, the same calls gRPC makes.
Explanations have routes of their own (explain_routes.py).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from embedsense.server.api import sense_models as m
from embedsense.server.api.checks import check_json_reply_size, json_string_bytes
from embedsense.server.api.collection_routes import WRITE_ERRORS, json_item_bytes, rest_route
from embedsense.server.api.http import HttpRoute
from embedsense.server.api.sense_ops import INVENTORIES_FEWER, INVENTORY_FEWER, SenseOps
from embedsense.server.engine import requested_priority
from embedsense.server.senses.senses import Disambiguation, FoundOccurrence

TAG = "Word senses"
# An occurrence's JSON beyond a hit's (collection_routes.json_item_bytes): its span object.
JSON_SPAN_BYTES = 40


def _disambiguation(result: Disambiguation) -> m.DisambiguateResponse:
    return m.DisambiguateResponse.model_construct(
        label=result.label,
        scores=[m.SenseScore.model_construct(label=label,
                                             probability=result.probabilities[label],
                                             similarity=result.similarities[label])
                for label in result.best_first()],
        nearest=[m.SenseExample.model_construct(label=label, text=text, similarity=cos)
                 for label, text, cos in result.nearest],
        span=m.span_reply(result.occurrence.start, result.occurrence.end), layers=result.layers,
        centred=result.centred, temperature=result.temperature,
        with_sentence=result.with_sentence,
    )  # fmt: skip


def _inventory(name: str, words: dict[str, dict[str, list[str]]], builtin: bool) -> m.Inventory:
    return m.Inventory.model_construct(name=name, builtin=builtin, words=words)


def _inventory_bytes(name: str, words: dict[str, dict[str, list[str]]]) -> int:
    return 40 + json_string_bytes(name) + sum(
        json_string_bytes(word) + sum(json_string_bytes(label) + 4
                                      + sum(json_string_bytes(e) + 1 for e in examples)
                                      for label, examples in senses.items())
        for word, senses in words.items()
    )  # fmt: skip


def _occurrence(o: FoundOccurrence) -> m.Occurrence:
    return m.Occurrence.model_construct(
        id=o.id,
        text=o.text,
        span=m.span_reply(o.start, o.end),
        score=o.score,
        metadata=o.metadata or {},
    )


def _occurrence_bytes(o: FoundOccurrence) -> int:
    return json_item_bytes(o.id, o.text, o.metadata, None) + JSON_SPAN_BYTES


class SenseRoutes:
    def __init__(self, ops: SenseOps) -> None:
        self.ops = ops

    def _within_reply_limit(self, sizes: Any, what: str, fewer: str, param: str | None) -> None:
        check_json_reply_size(sizes, self.ops.settings.max_message_bytes, what, fewer, param)

    def routes(self) -> list[HttpRoute]:
        route = rest_route(TAG)
        one = "/v1/inventories/{name}"
        collection = "/v1/collections/{name}"
        return [
            route("POST", "/v1/senses/disambiguate", self.disambiguate,
                  "Which sense a word has in a text",
                  "Against the senses given (label -> example sentences), or a stored "
                  'inventory ("default" when neither). The word is found as a whole word; '
                  "or name its characters with span.",
                  body=m.DisambiguateRequest, reply=m.DisambiguateResponse, prioritized=True),
            route("GET", "/v1/inventories", self.list, "List the sense inventories",
                  reply=m.InventoryList, errors=(413, 503)),
            route("POST", "/v1/inventories", self.create, "Store a sense inventory",
                  "409 if one of that name exists (unless replace); \"default\" is the "
                  "server's own and cannot be replaced.",
                  body=m.CreateInventoryRequest, reply=m.Inventory,
                  errors=(*WRITE_ERRORS, 409)),
            route("GET", one, self.get, "One sense inventory", reply=m.Inventory,
                  errors=(400, 404, 413, 503)),
            route("DELETE", one, self.delete, "Delete a sense inventory",
                  reply=m.DeletedInventory, errors=(400, 404, 503, 507)),
            route("POST", collection + "/occurrences", self.occurrences,
                  "A word's occurrences used in the sense it has in a text",
                  "Best first, from a collection created with store_tokens (400 otherwise). "
                  "No occurrences, 0 compared: the collection lacks the word.",
                  body=m.SearchOccurrencesRequest, reply=m.SearchOccurrencesResponse,
                  prioritized=True),
            route("POST", collection + "/senses", self.induce,
                  "A word's senses in a collection, found by clustering",
                  "Unlabelled: each sense's size and most central occurrences. The "
                  "collection needs store_tokens.",
                  body=m.InduceSensesRequest, reply=m.InduceSensesResponse),
        ]  # fmt: skip

    async def disambiguate(
        self, request: web.Request, body: m.DisambiguateRequest
    ) -> m.DisambiguateResponse:
        result = await self.ops.disambiguate(
            body.text, body.word, span=body.span_pair(), occurrence=body.occurrence,
            senses=body.senses, inventory=body.inventory, layers=body.layers,
            centre=body.centre, with_sentence=body.with_sentence,
            priority=requested_priority.get(),
        )  # fmt: skip
        return _disambiguation(result)

    async def list(self, request: web.Request, body: None) -> m.InventoryList:
        listed = await self.ops.inventories()
        self._within_reply_limit((_inventory_bytes(name, words) for name, words, _ in listed),
                                 "inventories", INVENTORIES_FEWER, None)  # fmt: skip
        return m.InventoryList.model_construct(inventories=[_inventory(*i) for i in listed])

    async def create(self, request: web.Request, body: m.CreateInventoryRequest) -> m.Inventory:
        words = await self.ops.create_inventory(body.name, body.words, body.replace)
        # Stored, then measured: a body limit above max_message_bytes lets a larger one in.
        self._within_reply_limit([_inventory_bytes(body.name, words)], "inventory",
                                 INVENTORY_FEWER, None)  # fmt: skip
        return _inventory(body.name, words, False)

    async def get(self, request: web.Request, body: None) -> m.Inventory:
        name, words, builtin = await self.ops.inventory(request.match_info["name"])
        self._within_reply_limit([_inventory_bytes(name, words)], "inventory", INVENTORY_FEWER,
                                 None)  # fmt: skip
        return _inventory(name, words, builtin)

    async def delete(self, request: web.Request, body: None) -> m.DeletedInventory:
        name = request.match_info["name"]
        await self.ops.delete_inventory(name)
        return m.DeletedInventory.model_construct(deleted=name)

    async def occurrences(
        self, request: web.Request, body: m.SearchOccurrencesRequest
    ) -> m.SearchOccurrencesResponse:
        found, compared = await self.ops.search_occurrences(
            request.match_info["name"], body.text, body.word, span=body.span_pair(),
            occurrence=body.occurrence, k=body.k, priority=requested_priority.get(),
        )  # fmt: skip
        self._within_reply_limit(map(_occurrence_bytes, found), "occurrences",
                                 "fewer occurrences (k)", "k")  # fmt: skip
        return m.SearchOccurrencesResponse.model_construct(
            occurrences=[_occurrence(o) for o in found], compared=compared
        )

    async def induce(
        self, request: web.Request, body: m.InduceSensesRequest
    ) -> m.InduceSensesResponse:
        induced = await self.ops.induce_senses(
            request.match_info["name"], body.word, k=body.k, max_k=body.max_k,
            central=body.central,
        )  # fmt: skip
        self._within_reply_limit((_occurrence_bytes(o) for s in induced.senses for o in s.central),
                                 "occurrences", "fewer central occurrences", "central")  # fmt: skip
        senses = [m.InducedSense.model_construct(size=s.size,
                                                 central=list(map(_occurrence, s.central)))
                  for s in induced.senses]  # fmt: skip
        return m.InduceSensesResponse.model_construct(
            senses=senses, occurrences=induced.occurrences, silhouette=induced.silhouette
        )
