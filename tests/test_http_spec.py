"""The HTTP API held to its published contract and to the two specs it follows: the OpenAPI
document generated from the request models, Schemathesis fuzzing a live server from that
document, the /docs page in a real browser with nothing loaded from elsewhere, and the
text-embeddings-inference and OpenAI features beyond the basics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx2
import numpy as np
import openai
import pytest
from conftest import ServerThread
from workload import at_once

from embedsense.client import Client
from embedsense.model import TextRole
from embedsense.server.api.tei_models import EmbedRequest
from embedsense.server.config import EngineConfig

KEY = "spec-secret"
# The embedding routes and /metrics; the collections'; the senses'; the explanations'.
OPERATIONS = 12 + 11 + 7 + 2
MODEL = "multilingual-e5-small"
TEXTS = ["我喜欢吃苹果", "我买了最新的苹果手机"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def running(e5, tmp_path_factory):
    server = ServerThread(
        e5,
        tmp_path_factory.mktemp("spec"),
        http_port=0,
        api_key=KEY,
        cors_allow_origin="https://app.example",
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def base(running):
    return f"http://127.0.0.1:{running.server.http_port}"


def call(
    base: str,
    path: str,
    body: object = None,
    headers: dict | None = None,
    method: str | None = None,
) -> tuple[int, dict, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        base + path,
        data=data,
        method=method,
        headers={
            "Authorization": f"Bearer {KEY}",
            "Content-Type": "application/json",
            **(headers or {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


# ---------------------------------------------------------------- the contract


def test_the_openapi_document_comes_from_the_request_models(base):
    status, _, body = call(base, "/openapi.json", headers={"Authorization": ""}, method="GET")
    doc = json.loads(body)
    assert status == 200 and doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/{model}",
        "/embed",
        "/similarity",
        "/",
        "/embed_all",
        "/tokenize",
        "/decode",
        "/info",
        "/health",
        "/metrics",
        # The collections' REST routes (tests/test_data_ops_api.py).
        "/v1/collections",
        "/v1/collections/{name}",
        *(
            f"/v1/collections/{{name}}/{op}"
            for op in ("upsert", "get", "delete", "count", "scroll", "update_metadata", "search")
        ),
        # Word senses (tests/test_http_senses.py).
        "/v1/senses/disambiguate",
        "/v1/inventories",
        "/v1/inventories/{name}",
        "/v1/collections/{name}/occurrences",
        "/v1/collections/{name}/senses",
        # Explanations (tests/test_http_explain.py).
        "/v1/explain",
        "/v1/compare_layers",
    }
    schemas = doc["components"]["schemas"]
    # The model's own fields, with the server's limits written in.
    assert set(schemas["EmbedRequest"]["properties"]) == set(EmbedRequest.model_fields)
    texts = schemas["EmbedRequest"]["properties"]["inputs"]["anyOf"][1]
    assert texts["maxItems"] == 2048 and texts["items"]["maxLength"] == 100_000
    assert schemas["EmbedRequest"]["properties"]["dimensions"]["anyOf"][0] == {"const": 384}
    # An empty vector is refused as not fitting the body's schema (422): the schema says so
    # (it allowed one).
    one, several = schemas["SearchRequest"]["properties"]["vector"]["anyOf"]
    assert one["minItems"] == 1 and several["minItems"] == 1 and several["items"]["minItems"] == 1
    stored_vector = schemas["NewDocument"]["properties"]["vector"]["anyOf"][0]
    assert stored_vector["minItems"] == 1, stored_vector
    # Each API's errors in its own shape; the key everywhere but health.
    embeddings = doc["paths"]["/v1/embeddings"]["post"]
    assert embeddings["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OpenAIErrorResponse"
    }
    assert doc["paths"]["/embed"]["post"]["responses"]["413"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/TEIError"}
    assert doc["security"] == [{"bearer": []}] and doc["paths"]["/health"]["get"]["security"] == []
    # Which role inputs get, and how to change it, on every embedding route.
    for path in ("/v1/embeddings", "/embed", "/embed_all", "/tokenize"):
        described = doc["paths"][path]["post"]["description"]
        assert "**query**" in described and "--default-prompt-name" in described, path


def test_schemathesis_finds_nothing_from_the_servers_own_document(e5, tmp_path):
    """Schemathesis reads /openapi.json and sends what it describes and what it does not
    (the coverage phase: boundaries, wrong types, missing fields; then random fuzzing), with
    a fixed seed, 100 examples per operation. Any 5xx, any reply off its schema, status or
    content type, a 405 without Allow, or a route that ignores the key is a failure."""
    # Small limits: a fuzzed request is cheap to answer (or to refuse) on a CPU.
    server = ServerThread(
        e5,
        tmp_path,
        http_port=0,
        api_key=KEY,
        max_texts_per_request=8,
        max_text_chars=200,
        max_request_chars=1000,
        engine=EngineConfig(dtype="float32", max_queued_tokens=4096),
    )
    # A word's occurrences and senses need a collection with token vectors that holds the
    # word: state no schema carries. Those two routes are sent to one (the rest of a request
    # fuzzed as any other), so that their answers are checked against the schema too.
    with Client(server.target, api_key=KEY) as c:
        c.create_collection(SENSES_COLLECTION, store_tokens=True)
        c.upsert(
            SENSES_COLLECTION,
            ["我喜欢吃苹果", "苹果很甜", "我买了最新的苹果手机", "苹果发布了新手机"],
        )
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        "[[operations]]\n"
        'include-path-regex = "^/v1/collections/\\\\{name\\\\}/(occurrences|senses)$"\n'
        f'parameters = {{ "path.name" = "{SENSES_COLLECTION}" }}\n'
    )
    checks = (
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_headers_conformance,response_schema_conformance,unsupported_method,"
        "missing_required_header,ignored_auth"
    )
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "run",
        f"http://127.0.0.1:{server.server.http_port}/openapi.json",
        "-H",
        f"Authorization: Bearer {KEY}",
        "--checks",
        checks,
        "--seed",
        "24",
        "--max-examples",
        "100",
        "--phases",
        "examples,coverage,fuzzing",
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--no-color",
        "--request-timeout",
        "60",
    ]
    started = time.monotonic()
    try:
        # In tmp_path: Schemathesis keeps a cache folder where it runs.
        run = subprocess.run(command, capture_output=True, text=True, timeout=480, cwd=tmp_path)
    finally:
        server.stop()
    seconds = time.monotonic() - started
    cases = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    print(f"schemathesis: {cases.group(0) if cases else '?'} in {seconds:.0f} s")
    assert run.returncode == 0 and warnings_not_excused(run.stdout) == [], run.stdout[-6000:]
    assert cases and int(cases.group(1)) == int(cases.group(2)) >= OPERATIONS * 50


SENSES_COLLECTION = "fuzzed-senses"
# Operations whose success needs state no schema can carry, by the warnings Schemathesis
# gives them for it. An upsert's vectors must have the dimension of the collection it names,
# and its texts a collection of our model's vectors: where every fuzzed name hits a collection
# the fuzzer made with another dimension, every upsert is rightly refused. A word's
# occurrences and senses need the word in the text and in the collection: sent to a
# collection that holds 苹果 (SENSES_COLLECTION), they are answered in the phases that start
# from the documented examples, and refused where the fuzzer draws the word and the text at
# random. (Schemathesis's per-operation warning settings do not reach these warnings.)
STATEFUL = {
    "Schema validation mismatch": {
        "POST /v1/collections/{name}/upsert",
        "POST /v1/collections/{name}/occurrences",
        "POST /v1/collections/{name}/senses",
    }
}


def warnings_not_excused(report: str) -> list[str]:
    """The warnings Schemathesis gives, less those on operations STATEFUL excuses from them;
    any other warning, on any route, counts."""
    if "No issues found" in report:
        return []
    block = report.partition(" WARNINGS ")[2].partition(" SUMMARY ")[0]
    left = []
    for section in re.split(r"\n(?=\S)(?!💡)", block.strip("= \n")):
        heading = section.splitlines()[0]
        if heading.startswith("💡"):
            continue
        kind = heading.split(":", 1)[0]
        listed = set(re.findall(r"^  - (.+)$", section, re.MULTILINE))
        if not listed or not listed <= STATEFUL.get(kind, set()):
            left.append(heading)
    return left or ([] if block.strip("= \n") else ["a report Schemathesis wrote differently"])


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if CHROMIUM is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium); .ci/run installs it")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def test_the_docs_page_typed_with_a_slash_leads_to_the_page(base):
    """It was a 404. Relative, as the page's own links are (right behind a path prefix)."""
    answer = httpx2.get(base + "/docs/", follow_redirects=False, timeout=30)
    assert answer.status_code == 308 and answer.headers["Location"] == "../docs"
    followed = httpx2.get(base + "/docs/", follow_redirects=True, timeout=30)
    assert followed.status_code == 200 and str(followed.url) == base + "/docs"
    assert "swagger-ui-bundle.js" in followed.text


def test_the_docs_page_works_offline_with_no_request_off_the_host(base, browser):
    context = browser.new_context()
    page = context.new_page()
    off_host, problems = [], []
    page.on("request", lambda r: None if r.url.startswith(base + "/") else off_host.append(r.url))
    page.on("pageerror", lambda err: problems.append(str(err)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    try:
        # No key: the page and the document are open. "/docs/" was a 404; it leads to the
        # page (whose files are relative to "/docs").
        for path in ("/docs", "/docs/"):
            page.goto(base + path)
            page.wait_for_selector(".opblock", timeout=30_000)
            assert page.url == base + "/docs", path
            assert page.locator(".opblock").count() == OPERATIONS
            assert "embedsense" in page.title() and page.locator("text=/embed_all").count() >= 1
    finally:
        context.close()
    assert off_host == [] and problems == []


# ---------------------------------------------------------------- TEI


def test_embed_all_gives_the_grpc_token_vectors(base, running):
    status, _, body = call(base, "/embed_all", {"inputs": TEXTS})
    per_token = [np.array(x) for x in json.loads(body)]
    with Client(running.target, api_key=KEY) as c:
        expected = c.embed_tokens(TEXTS, role_name="query")
    assert status == 200
    assert [len(x) for x in per_token] == [len(e.vectors) for e in expected]
    for got, want in zip(per_token, expected, strict=True):
        assert (cosine(got, want.vectors) > 0.9999).all()


def test_token_id_inputs_on_embed_are_the_texts_vectors(base, e5):
    seen = e5.tokenizer.encode(TEXTS[0], TextRole.QUERY)
    ids = [i for i, real in zip(seen.ids, seen.from_text, strict=True) if real]
    _, _, as_text = call(base, "/embed", {"inputs": TEXTS[0]})
    status, _, as_ids = call(base, "/embed", {"inputs": [ids]})
    assert (
        status == 200
        and cosine(np.array(json.loads(as_ids)[0]), np.array(json.loads(as_text)[0])) > 0.9999
    )


def test_truncation_direction_cuts_the_chosen_end(base):
    long = "开头的苹果" + "香蕉" * 600 + "结尾的手机"
    vectors = {}
    for side in ("Left", "Right", "left"):
        status, _, body = call(
            base, "/embed", {"inputs": long, "truncate": True, "truncation_direction": side}
        )
        assert status == 200
        vectors[side] = np.array(json.loads(body)[0])
    _, _, head = call(base, "/embed", {"inputs": long[:400]})
    _, _, tail = call(base, "/embed", {"inputs": long[-400:]})
    head, tail = np.array(json.loads(head)[0]), np.array(json.loads(tail)[0])
    assert cosine(vectors["Right"], head) > cosine(vectors["Right"], tail)
    assert cosine(vectors["Left"], tail) > cosine(vectors["Left"], head)
    assert cosine(vectors["Left"], vectors["left"]) > 0.9999
    status, _, body = call(base, "/embed", {"inputs": "x", "truncation_direction": "Up"})
    assert status == 422 and "truncation_direction" in json.loads(body)["error"]


def test_tokenize_honours_prompt_name_and_gives_null_offsets_to_non_text_tokens(base):
    _, _, body = call(base, "/tokenize", {"inputs": "苹果", "prompt_name": "passage"})
    tokens = json.loads(body)[0]
    assert "▁passage" in [t["text"] for t in tokens]
    assert tokens[0]["special"] and tokens[0]["start"] is None and tokens[-1]["special"]
    prompt = next(t for t in tokens if t["text"] == "▁passage")
    assert not prompt["special"] and prompt["start"] is None and prompt["stop"] is None
    apple = next(t for t in tokens if t["text"] == "苹果")
    assert (apple["start"], apple["stop"]) == (0, 2)
    _, _, body = call(base, "/tokenize", {"inputs": "苹果", "add_special_tokens": False})
    assert not any(t["special"] for t in json.loads(body)[0])


def test_an_empty_batch_is_teis_400_empty(base):
    for path, body in (
        ("/embed", {"inputs": []}),
        ("/tokenize", {"inputs": []}),
        ("/embed", {"inputs": "  "}),
        ("/decode", {"ids": []}),
    ):
        status, _, answer = call(base, path, body)
        assert (status, json.loads(answer)["error_type"]) == (400, "Empty"), (path, answer)


def test_decode_gives_back_the_text(base):
    _, _, body = call(base, "/tokenize", {"inputs": TEXTS})
    ids = [[t["id"] for t in tokens] for tokens in json.loads(body)]
    status, _, body = call(base, "/decode", {"ids": ids})
    assert status == 200 and json.loads(body) == [f"query: {t}" for t in TEXTS]
    status, _, body = call(base, "/decode", {"ids": ids[0], "skip_special_tokens": False})
    assert json.loads(body)[0].startswith("<s>")
    status, _, body = call(base, "/decode", {"ids": [10**9]})
    assert status == 413 and "vocabulary" in json.loads(body)["error"]


def test_server_wide_default_prompt_name_and_auto_truncate(e5, tmp_path, base):
    server = ServerThread(
        e5, tmp_path, http_port=0, default_prompt_name="passage", auto_truncate=True
    )
    other = f"http://127.0.0.1:{server.server.http_port}"
    try:
        _, _, as_passage = call(base, "/embed", {"inputs": TEXTS[0], "prompt_name": "passage"})
        _, _, by_default = call(other, "/embed", {"inputs": TEXTS[0]})
        assert json.loads(as_passage) == json.loads(by_default)
        status, _, _ = call(other, "/embed", {"inputs": "苹果" * 600})  # cut, not refused
        assert status == 200
        status, _, _ = call(other, "/embed", {"inputs": "苹果" * 600, "truncate": False})
        assert status == 413
        client = openai.OpenAI(base_url=f"{other}/v1", api_key="none", max_retries=0)
        assert len(client.embeddings.create(input="苹果" * 600, model=MODEL).data) == 1
        _, _, info = call(other, "/info", method="GET")
        assert json.loads(info)["auto_truncate"] is True
        _, _, openapi = call(other, "/openapi.json", method="GET")
        assert "**passage**" in json.loads(openapi)["paths"]["/embed"]["post"]["description"]
    finally:
        server.stop()


# ---------------------------------------------------------------- OpenAI


def test_openai_model_by_id_and_errors_as_openai_sends_them(base):
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("text-embedding-3-small")
    assert raised.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(input=["苹果", "\x00"], model=MODEL)
    error = raised.value.body
    assert (error["type"], error["param"]) == ("invalid_request_error", "input")
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(input="苹果", model=MODEL, dimensions=12)
    assert raised.value.body["param"] == "dimensions"
    with pytest.raises(openai.AuthenticationError) as raised:
        openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list()
    assert (raised.value.body["type"], raised.value.body["code"]) == (
        "invalid_request_error",
        "invalid_api_key",
    )


def test_openai_rate_limit_is_type_requests(e5, tmp_path):
    busy = ServerThread(
        e5, tmp_path, http_port=0, engine=EngineConfig(dtype="float32", max_queued_tokens=600)
    )
    try:
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{busy.server.http_port}/v1", api_key="none", max_retries=0
        )
        answers = at_once(lambda: client.embeddings.create(input=["苹果 " * 100] * 2, model=MODEL))
        limited = [a for a in answers if isinstance(a, openai.RateLimitError)]
        assert limited and all(
            (a.body["type"], a.body["code"]) == ("requests", "rate_limit_exceeded") for a in limited
        )
    finally:
        busy.stop()


# ---------------------------------------------------------------- both


def test_metrics_on_the_http_port_with_the_key(base):
    assert call(base, "/metrics", method="GET", headers={"Authorization": ""})[0] == 401
    status, headers, body = call(base, "/metrics", method="GET")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b"embedsense_requests_total" in body


def test_bearer_is_case_insensitive_and_a_401_says_www_authenticate(base):
    for scheme in ("bearer", "BEARER", "Bearer"):
        assert (
            call(base, "/info", method="GET", headers={"Authorization": f"{scheme} {KEY}"})[0]
            == 200
        )
    status, headers, _ = call(
        base, "/info", method="GET", headers={"Authorization": f"Basic {KEY}"}
    )
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer realm=")
    status, headers, _ = call(base, "/info", method="GET", headers={"Authorization": ""})
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="embedsense"'


def test_cors_is_opt_in_and_answers_preflights_without_the_key(base, e5, tmp_path):
    origin = {"Origin": "https://app.example"}
    status, headers, _ = call(
        base,
        "/v1/embeddings",
        method="OPTIONS",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Authorization": "",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    status, headers, _ = call(base, "/embed", {"inputs": "x"}, headers=origin)
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "x-request-id" in headers["Access-Control-Expose-Headers"]
    _, headers, _ = call(
        base, "/embed", {"inputs": "x"}, headers={"Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in headers
    plain = ServerThread(e5, tmp_path, http_port=0)  # not configured: no CORS at all
    try:
        status, headers, _ = call(
            f"http://127.0.0.1:{plain.server.http_port}",
            "/embed",
            method="OPTIONS",
            headers={**origin, "Access-Control-Request-Method": "POST"},
        )
        assert status == 405 and "Access-Control-Allow-Origin" not in headers
    finally:
        plain.stop()


def test_a_write_from_another_sites_page_is_refused_but_the_own_page_and_curl_are_not(base):
    """A browser sends another site's text/plain POST (or a form's) with no preflight: CORS
    only hides the reply, so the server must not run it. Its own pages (/docs posts from the
    same origin), an allowed origin and a caller with no Origin (curl, SDKs) go on."""
    assert call(base, "/v1/collections", {"name": "csrf"})[0] == 200
    elsewhere = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    status, _, answer = call(base, "/v1/collections/csrf", method="DELETE", headers=elsewhere)
    assert status == 403 and json.loads(answer)["error"]["code"] == "forbidden", answer
    assert "https://evil.example" in json.loads(answer)["error"]["message"]
    status, _, answer = call(base, "/embed", {"inputs": "x"}, headers=elsewhere)
    assert status == 403 and json.loads(answer)["error_type"] == "Unauthorized", answer
    assert call(base, "/v1/collections/csrf", method="GET")[0] == 200  # still there
    assert call(base, "/info", method="GET", headers=elsewhere)[0] == 200  # reads: CORS's job
    for fine in ({"Origin": base}, {"Origin": "https://app.example"}, {}):
        headers = {**fine, "Content-Type": "text/plain"}
        assert call(base, "/embed", {"inputs": "x"}, headers=headers)[0] == 200, fine


def test_cors_allows_every_method_and_header_a_browser_client_sends_and_varies(base):
    """DELETE drops a collection, X-Priority is documented, the openai JS SDK sends
    x-stainless-* headers: a preflight naming them must be answered yes. A reply that
    depends on Origin says Vary: Origin, to an origin not allowed and to no origin too."""
    status, headers, _ = call(
        base,
        "/v1/collections/any",
        method="OPTIONS",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "DELETE",
            "Access-Control-Request-Headers": "authorization, x-priority, x-stainless-os",
        },
    )
    assert status == 204 and "DELETE" in headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "x-priority", "x-stainless-os"} <= allowed
    for origin in ({"Origin": "https://app.example"}, {"Origin": "https://evil.example"}, {}):
        _, headers, _ = call(base, "/info", method="GET", headers=origin)
        assert "Origin" in headers.get("Vary", ""), origin


def test_get_and_update_metadata_take_ids_as_the_document_says(base):
    """Ids are 1-256 characters (not texts of 100,000), at most max_texts_per_request of
    them; get refused any number. No ids gets no documents, as on gRPC and in the SDK (HTTP
    refused them), and as a delete of no ids deletes none; a metadata update needs one."""
    status, _, body = call(base, "/openapi.json", headers={"Authorization": ""}, method="GET")
    schemas = json.loads(body)["components"]["schemas"]
    for model, least in (("GetRequest", 0), ("UpdateMetadataRequest", 1)):
        ids = schemas[model]["properties"]["ids"]
        assert ids.get("minItems", 0) == least and ids["maxItems"] == 2048, model
        assert ids["items"]["maxLength"] == 256 and "pattern" not in ids["items"], model
    assert call(base, "/v1/collections", {"name": "ids"})[0] == 200
    status, _, answer = call(base, "/v1/collections/ids/get", {"ids": []})
    assert status == 200 and json.loads(answer) == {"documents": [], "missing": []}, answer
    status, _, answer = call(base, "/v1/collections/no-such/get", {"ids": []})
    assert status == 404, answer
    status, _, answer = call(base, "/v1/collections/ids/update_metadata",
                             {"ids": [], "patch": {"a": 1}})  # fmt: skip
    error = json.loads(answer)["error"]
    assert status == 400 and error["message"] == "ids: at least one id is needed", answer
    assert error["code"] == "invalid_argument" and error["param"] == "ids"
    status, _, answer = call(base, "/v1/collections/ids/get", {"ids": ["a"] * 2049})
    assert status == 400, answer[:200]
    assert "2049 ids; the limit is 2048" in json.loads(answer)["error"]["message"], answer
    status, _, answer = call(base, "/v1/collections/ids/get", {"ids": ["a"] * 2048})
    assert status == 200 and len(json.loads(answer)["missing"]) == 2048
