"""Word senses over HTTP: the answers gRPC gives (the SDK's, from the same server), the
errors in the REST dialect with their statuses, and the routes in the OpenAPI document."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from conftest import ServerThread

from embedsense.client import Client

KEY = "senses-secret"
FRUIT = ["我喜欢吃苹果", "苹果很甜", "她每天吃一个红苹果"]
COMPANY = ["苹果公司发布了新手机", "苹果的股价上涨了", "我买了最新的苹果电脑"]


@pytest.fixture(scope="module")
def running(e5, tmp_path_factory):
    server = ServerThread(e5, tmp_path_factory.mktemp("senses"), http_port=0, api_key=KEY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(running):
    with Client(running.target, api_key=KEY) as c:
        yield c


def sender(port: int, key: str | None = KEY):
    """A JSON call to the server's HTTP port on 127.0.0.1, with `key` (None: no key): its
    status and JSON reply, errors included."""

    def call(
        method: str, path: str, body: object = None, headers: dict | None = None
    ) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json",
                     **({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    return call


@pytest.fixture(scope="module")
def send(running):
    return sender(running.server.http_port)


@pytest.fixture(scope="module")
def stored(client):
    """A collection with token vectors holding 苹果 in both senses."""
    client.create_collection("fruit-and-firm", store_tokens=True)
    client.upsert("fruit-and-firm", [{"text": t, "metadata": {"sense": "fruit"}} for t in FRUIT]
                  + [{"text": t, "metadata": {"sense": "company"}} for t in COMPANY])  # fmt: skip
    return "fruit-and-firm"


def test_disambiguate_gives_the_grpc_answer(send, client):
    senses = {"fruit": FRUIT[1:], "company": COMPANY[:2]}
    for text, want in (("我喜欢吃苹果", "fruit"), ("我买了最新的苹果手机", "company")):
        status, got = send("POST", "/v1/senses/disambiguate",
                           {"text": text, "word": "苹果", "senses": senses})  # fmt: skip
        grpc = client.disambiguate(text, "苹果", senses)
        assert status == 200, got
        assert got["label"] == grpc.label == want
        assert [s["label"] for s in got["scores"]] == [s.label for s in grpc.scores]
        assert [s["probability"] for s in got["scores"]] == pytest.approx(
            [s.probability for s in grpc.scores], abs=1e-5
        )
        assert (got["span"]["start"], got["span"]["end"]) == grpc.span
        assert [(n["label"], n["text"]) for n in got["nearest"]] == [n[:2] for n in grpc.nearest]
    # The default inventory, a span, and the options, as gRPC reads them.
    body = {"text": "我喜欢吃苹果", "span": {"start": 4, "end": 6}, "layers": [-1, -2],
            "centre": False, "with_sentence": False}  # fmt: skip
    status, got = send("POST", "/v1/senses/disambiguate", body)
    grpc = client.disambiguate("我喜欢吃苹果", span=(4, 6), layers=[-1, -2], centre=False,
                               with_sentence=False)  # fmt: skip
    assert status == 200, got
    assert (got["label"], got["centred"], got["with_sentence"]) == (grpc.label, False, False)
    assert got["layers"] == grpc.layers and len(got["layers"]) == 2


def test_inventories_are_stored_listed_read_and_deleted(send, client):
    words = {"苹果": {"fruit": FRUIT[:2], "company": COMPANY[:2]}}
    status, made = send("POST", "/v1/inventories", {"name": "http-inv", "words": words})
    assert status == 200 and made == {"name": "http-inv", "builtin": False, "words": words}
    assert client.get_inventory("http-inv").words == words  # the same store as gRPC's
    status, again = send("POST", "/v1/inventories", {"name": "http-inv", "words": words})
    assert status == 409 and again["error"]["code"] == "already_exists"
    status, listed = send("GET", "/v1/inventories")
    names = [(i["name"], i["builtin"]) for i in listed["inventories"]]
    assert status == 200 and ("default", True) in names and ("http-inv", False) in names
    status, got = send("POST", "/v1/senses/disambiguate",
                       {"text": "苹果很好吃", "word": "苹果", "inventory": "http-inv"})  # fmt: skip
    assert status == 200 and got["label"] == "fruit", got
    assert send("GET", "/v1/inventories/http-inv") == (200, made)
    assert send("DELETE", "/v1/inventories/http-inv") == (200, {"deleted": "http-inv"})
    status, gone = send("GET", "/v1/inventories/http-inv")
    assert status == 404 and gone["error"]["code"] == "not_found"
    status, default = send("GET", "/v1/inventories/default")
    assert status == 200 and default["builtin"] and "苹果" in default["words"]
    status, kept = send("DELETE", "/v1/inventories/default")
    assert status == 400 and "ships with the server" in kept["error"]["message"]


def test_occurrences_and_induced_senses_give_the_grpc_answer(send, client, stored):
    path = f"/v1/collections/{stored}"
    status, got = send("POST", path + "/occurrences", {"text": "我买了最新的苹果手机",
                                                       "word": "苹果", "k": 3})  # fmt: skip
    grpc = client.search_occurrences(stored, "我买了最新的苹果手机", "苹果", k=3)
    assert status == 200, got
    assert got["compared"] == grpc.compared == 6
    assert [o["id"] for o in got["occurrences"]] == [o.id for o in grpc]
    assert {o["metadata"]["sense"] for o in got["occurrences"]} == {"company"}
    first = got["occurrences"][0]
    assert first["text"][first["span"]["start"] : first["span"]["end"]] == "苹果"
    status, got = send("POST", path + "/senses", {"word": "苹果", "k": 2, "central": 2})
    grpc = client.induce_senses(stored, "苹果", k=2, central=2)
    assert status == 200, got
    assert got["occurrences"] == grpc.occurrences == 6
    assert [s["size"] for s in got["senses"]] == [s.size for s in grpc.senses]
    assert [[o["id"] for o in s["central"]] for s in got["senses"]] == [
        [o.id for o in s.central] for s in grpc.senses
    ]
    assert got["silhouette"] == pytest.approx(grpc.silhouette, abs=1e-6)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "param"),
    [
        # The field at fault, where the senses logic finds the fault (it named none).
        ("POST", "/v1/senses/disambiguate", {"text": "我喜欢吃香蕉", "word": "苹果"}, 400,
         "invalid_argument", "word"),
        ("POST", "/v1/senses/disambiguate", {"text": "我喜欢吃苹果", "word": "苹果",
                                             "occurrence": 1}, 400, "invalid_argument",
         "occurrence"),
        ("POST", "/v1/senses/disambiguate", {"text": "我喜欢吃苹果",
                                             "span": {"start": 4, "end": 9}}, 400,
         "invalid_argument", "span"),
        ("POST", "/v1/collections/fruit-and-firm/senses", {"word": "苹果", "k": 7}, 400,
         "invalid_argument", "k"),
        ("POST", "/v1/senses/disambiguate", {"text": "我喜欢吃苹果", "word": "苹果",
                                             "senses": {"a": ["苹果很甜"], "b": []}}, 400,
         "invalid_argument", "senses"),
        ("POST", "/v1/inventories", {"name": "one-sense", "words": {"苹果": {"a": ["苹果"]}}},
         400, "invalid_argument", "words"),
        # The word a span names, whitespace alone: the span's fault, not the senses'.
        ("POST", "/v1/senses/disambiguate", {"text": "我喜欢吃 苹果",
                                             "span": {"start": 4, "end": 5},
                                             "senses": {"a": ["苹果很甜"], "b": ["苹果手机"]}},
         400, "invalid_argument", "span"),
        ("POST", "/v1/senses/disambiguate", {"text": "我喜欢吃苹果", "word": "苹果",
                                             "inventory": "absent"}, 404, "not_found", None),
        ("POST", "/v1/senses/disambiguate", {"text": "", "word": "苹果"}, 400,
         "invalid_argument", "text"),
        ("POST", "/v1/senses/disambiguate", {"text": "我喜欢吃苹果", "word": "苹果",
                                             "senses": {"fruit": [""]}}, 400,
         "invalid_argument", "senses"),
        ("POST", "/v1/senses/disambiguate", {"text": "苹果", "wrod": "苹果"}, 422,
         "invalid_body", "wrod"),
        # An empty senses object and an empty inventory name were the default inventory.
        ("POST", "/v1/senses/disambiguate", {"text": "我喜欢吃苹果", "word": "苹果",
                                             "senses": {}}, 400, "invalid_argument", "senses"),
        ("POST", "/v1/senses/disambiguate", {"text": "我喜欢吃苹果", "word": "苹果",
                                             "inventory": ""}, 400, "invalid_argument",
         "inventory"),
        ("POST", "/v1/senses/disambiguate", {"text": "我喜欢吃苹果"}, 400, "invalid_argument",
         "word"),
        # Its param was "senses (every example)".
        ("POST", "/v1/senses/disambiguate", {"text": "我喜欢吃苹果", "word": "苹果",
                                             "senses": {"a": ["苹果"] * 2049}}, 400,
         "invalid_argument", "senses"),
        ("POST", "/v1/inventories", {"name": "default", "words": {"苹果": {"a": ["苹果"]}}},
         409, "already_exists", None),
        ("POST", "/v1/collections/absent/occurrences", {"text": "苹果", "word": "苹果"}, 404,
         "not_found", None),
        ("POST", "/v1/collections/absent/senses", {"word": "苹果"}, 404, "not_found", None),
        ("POST", "/v1/collections/fruit-and-firm/senses", {"word": "苹果", "k": 0}, 422,
         "invalid_body", "k"),
        ("POST", "/v1/collections/fruit-and-firm/senses", {"word": "香蕉"}, 400,
         "invalid_argument", "word"),
    ],
)  # fmt: skip
def test_bad_requests_get_their_status_and_the_server_keeps_serving(
    send, stored, method, path, body, status, code, param
):
    got_status, got = send(method, path, body)
    assert (got_status, got["error"]["code"], got["error"]["param"]) == (status, code, param), got
    assert send("GET", "/v1/inventories")[0] == 200


def test_the_sense_calls_run_as_queries_unless_told_bulk_is_bulk(send, client, running, stored):
    """Priority.BULK is 0: a default taken with `or` would make it a query."""
    rows = running.server.engine.stats.rows_by_priority
    calls = [
        lambda h: send("POST", "/v1/senses/disambiguate",
                       {"text": "我喜欢吃苹果", "word": "苹果"}, h),
        lambda h: send("POST", f"/v1/collections/{stored}/occurrences",
                       {"text": "我喜欢吃苹果", "word": "苹果"}, h),
        lambda h: client.disambiguate("我喜欢吃苹果", "苹果", priority=h and "bulk"),
        lambda h: client.search_occurrences(stored, "我喜欢吃苹果", "苹果",
                                            priority=h and "bulk"),
    ]  # fmt: skip
    for i, call in enumerate(calls):
        for headers, level in (({"X-Priority": "bulk"}, "bulk"), (None, "query")):
            before = dict(rows)
            answer = call(headers)
            assert not isinstance(answer, tuple) or answer[0] == 200, answer
            moved = {p for p in rows if rows[p] != before.get(p, 0)}
            assert moved == {level}, (i, level, moved)


def test_a_body_or_field_that_is_no_object_is_said_so_in_jsons_words(send):
    # pydantic said "Input should be a valid dictionary or instance of DisambiguateRequest".
    for body, said in (
        ([], "body: must be a JSON object"),
        ({"text": "苹果", "span": [0, 2]}, "span: must be a JSON object"),
    ):
        status, got = send("POST", "/v1/senses/disambiguate", body)
        assert (status, got["error"]["message"]) == (422, said), got


def test_a_collection_without_token_vectors_is_a_failed_precondition(send, client):
    client.create_collection("no-tokens")
    client.upsert("no-tokens", FRUIT)
    status, got = send("POST", "/v1/collections/no-tokens/occurrences",
                       {"text": "我喜欢吃苹果", "word": "苹果"})  # fmt: skip
    assert status == 400 and got["error"]["code"] == "failed_precondition", got
    assert "store_tokens" in got["error"]["message"]


def test_the_openapi_document_describes_the_sense_routes(send):
    status, doc = send("GET", "/openapi.json")
    assert status == 200
    paths = doc["paths"]
    assert set(paths["/v1/senses/disambiguate"]) == {"post"}
    assert set(paths["/v1/inventories"]) == {"get", "post"}
    assert set(paths["/v1/inventories/{name}"]) == {"get", "delete"}
    assert {"/v1/collections/{name}/occurrences", "/v1/collections/{name}/senses"} <= set(paths)
    schemas = doc["components"]["schemas"]
    schema = schemas["DisambiguateRequest"]
    assert schema["required"] == ["text"] and schema["properties"]["text"]["minLength"] == 1
    # The bounds in JSON Schema's words (pydantic's ge and le were written as they are).
    for field in ("k", "max_k"):
        bounded = schemas["InduceSensesRequest"]["properties"][field]["anyOf"][0]
        assert (bounded["minimum"], bounded["maximum"]) == (1, 20) and "le" not in bounded
    # A word's senses as the server bounds them: two or more, each 1-64 examples, each a text.
    senses = schemas["DisambiguateRequest"]["properties"]["senses"]["anyOf"][0]
    by_word = schemas["CreateInventoryRequest"]["properties"]["words"]["additionalProperties"]
    for bounded in (senses, by_word):
        examples = bounded["additionalProperties"]
        assert bounded["minProperties"] == 2, bounded
        assert (examples["minItems"], examples["maxItems"]) == (1, 64)
        assert examples["items"]["minLength"] == 1 and examples["items"]["maxLength"] == 100_000
