"""RunMetadata.current() and get(): read-only views that work wherever a dict or list does."""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given

from metaops import (
    Increment,
    InvalidOperationError,
    InvalidValueError,
    MetaopsError,
    ReadOnlyError,
    Set,
    apply,
    json_equal,
    json_size,
    json_text,
)
from metaops.buffer import DictView, Flush, ListView, RunMetadata
from metaops.strategies import json_values, keys, metadata
from tests.buffer_support import Metadata, budget, snapshot
from tests.oracle import same_json

NESTED: Metadata = {
    "user": {"name": "Eric", "tags": ["a", {"deep": [1, 2.5, None, True]}]},
    "logs": ["one", [], {}],
    "empty": {},
    "text": "日本語 \ud800 🎉",
    "n": -0.0,
}

# --------------------------------------------------------------------------- serializers


@pytest.mark.parametrize(
    "dumps",
    [
        json.dumps,
        lambda value: json.dumps(value, indent=2),
        lambda value: json.dumps(value, sort_keys=True, ensure_ascii=False),
        json_text,
        json_size,
    ],
    ids=["json.dumps", "json.dumps-indent", "json.dumps-sort_keys", "json_text", "json_size"],
)
def test_what_current_and_get_return_serializes_as_the_plain_json(dumps: Callable[[Any], object]) -> None:
    """json.dumps, json_text and json_size take views, nested ones included, as the dicts they show.

    (They used to fail: "DictView is not JSON serializable", and json_text's error named json_size.)
    """
    md = RunMetadata(NESTED)
    plain: Any = md.current().to_dict()
    assert dumps(md.current()) == dumps(plain)
    assert dumps(md.get("user")) == dumps(plain["user"])
    assert dumps(md.get("logs")) == dumps(plain["logs"])
    assert dumps(md.get("$.user.tags")) == dumps(plain["user"]["tags"])
    assert dumps({"wrapped": [md.current(), md.get("logs")]}) == dumps({"wrapped": [plain, plain["logs"]]})
    assert dumps(RunMetadata().current()) == dumps({})


@budget(3)
@given(initial=metadata(max_leaves=8))
def test_current_serializes_and_measures_as_its_plain_copy(initial: Metadata) -> None:
    """For any metadata: json.dumps and json_text of current() are to_dict()'s; json_size is the size."""
    md = RunMetadata(initial, limit=10**7)
    view = md.current()
    plain = view.to_dict()
    assert json.dumps(view) == json.dumps(plain)
    assert json_text(view) == json_text(plain)
    assert json_size(view) == md.size == json_size(plain)


# --------------------------------------------------------------------------- read-only


def test_current_is_a_read_only_snapshot_all_the_way_down() -> None:
    """Nested lists and dicts of current() cannot be changed, and later calls do not change it."""
    md = RunMetadata({"user": {"name": "Eric", "tags": ["a"]}, "logs": ["one"]})
    view = md.current()
    user = view["user"]
    assert isinstance(user, DictView)
    assert isinstance(user, dict)
    assert isinstance(user["tags"], ListView)
    assert isinstance(user["tags"], list)
    with pytest.raises(ReadOnlyError, match="DictView is read-only"):
        view["x"] = 1
    with pytest.raises(ReadOnlyError, match="ListView is read-only"):
        user["tags"][0] = "b"
    with pytest.raises(ReadOnlyError, match=r"append\(\) cannot change it; to_list\(\)"):
        user["tags"].append("b")
    with pytest.raises(ReadOnlyError, match=r"clear\(\) cannot change it; to_dict\(\)"):
        view.clear()
    with pytest.raises(ReadOnlyError):
        view._data = {}
    listed = view["logs"]
    md.append("logs", "two").set("$.user.name", "Ann")
    assert listed == ["one"]
    assert view == {"user": {"name": "Eric", "tags": ["a"]}, "logs": ["one"]}
    assert md.current() == {"user": {"name": "Ann", "tags": ["a"]}, "logs": ["one", "two"]}


_DICT_MUTATIONS: list[Callable[[Any], object]] = [
    lambda view: view.__setitem__("user", 1),
    lambda view: view.__setitem__("new", 1),
    lambda view: view.__delitem__("user"),
    lambda view: view.clear(),
    lambda view: view.pop("user"),
    lambda view: view.pop("absent", None),
    lambda view: view.popitem(),
    lambda view: view.setdefault("user", 1),
    lambda view: view.setdefault("new", 1),
    lambda view: view.update(new=1),
    lambda view: view.update({"user": 1}),
    lambda view: view.__ior__({"new": 1}),
    lambda view: setattr(view, "_data", {}),
    lambda view: setattr(view, "__class__", dict),
    lambda view: delattr(view, "_data"),
]
_LIST_MUTATIONS: list[Callable[[Any], object]] = [
    lambda view: view.__setitem__(0, 1),
    lambda view: view.__setitem__(slice(0, 1), [1]),
    lambda view: view.__delitem__(0),
    lambda view: view.append(1),
    lambda view: view.extend([1]),
    lambda view: view.insert(0, 1),
    lambda view: view.pop(),
    lambda view: view.remove("a"),
    lambda view: view.clear(),
    lambda view: view.sort(),
    lambda view: view.reverse(),
    lambda view: view.__iadd__([1]),
    lambda view: view.__imul__(2),
    lambda view: setattr(view, "_data", []),
    lambda view: delattr(view, "_data"),
]


@pytest.mark.parametrize("mutate", _DICT_MUTATIONS + _LIST_MUTATIONS)
def test_every_way_to_change_a_view_raises_and_changes_nothing(mutate: Callable[[Any], object]) -> None:
    """Each mutating method of dict and list raises ReadOnlyError (a TypeError) on a view, at any depth."""
    md = RunMetadata({"user": {"tags": ["a", "b"], "inner": {"k": 1}}, "logs": ["a", "b"]})
    before = snapshot(md)
    views = (md.current(), md.get("user"), md.get("$.user.inner"))
    lists = (md.get("logs"), md.get("$.user.tags"), md.current()["user"]["tags"])
    for view in views if mutate in _DICT_MUTATIONS else lists:
        shown = json.dumps(view)
        with pytest.raises(ReadOnlyError) as caught:
            mutate(view)
        assert isinstance(caught.value, TypeError)
        assert isinstance(caught.value, MetaopsError)
        assert json.dumps(view) == shown
    assert same_json(snapshot(md), before)


def test_calling_init_again_changes_nothing() -> None:
    """A view is made by __new__: calling __init__ on it again (dict's and list's refill) does nothing."""
    md = RunMetadata({"logs": ["a"], "n": 1})
    view, logs = md.current(), md.get("logs")
    DictView.__init__(view, {"n": 2})
    ListView.__init__(logs, ["b"])
    assert view == {"logs": ["a"], "n": 1}
    assert logs == ["a"]
    assert md.current() == {"logs": ["a"], "n": 1}


def test_plain_copies_of_a_view_hand_out_views_inside() -> None:
    """dict(view), {**view}, .copy(), | and list operations give plain containers whose insides stay views.

    So a caller can change its copy's top level freely, and still cannot reach the buffer's state.
    """
    md = RunMetadata({"user": {"tags": ["a"]}, "logs": [{"line": 1}]})
    before = snapshot(md)
    view, logs = md.current(), md.get("logs")

    def keywords(**items: Any) -> dict[str, Any]:
        return items

    dict_copies = [dict(view), {**view}, view.copy(), view | {}, {} | view, keywords(**view)]
    for plain in dict_copies:
        assert type(plain) is dict
        assert plain == {"user": {"tags": ["a"]}, "logs": [{"line": 1}]}
        assert isinstance(plain["user"], DictView)
        plain["user"] = "changed"
        with pytest.raises(ReadOnlyError):
            plain["logs"].append(2)
    empty: list[Any] = []
    list_copies = [
        list(logs),
        [*logs],
        logs.copy(),
        logs + empty,
        empty + logs,
        logs * 1,
        logs[:],
        list(reversed(logs)),
    ]
    for plain_list in list_copies:
        assert plain_list == [{"line": 1}]
        assert isinstance(plain_list[0], DictView)
        with pytest.raises(ReadOnlyError):
            plain_list[0]["line"] = 2
    assert isinstance(logs[:], ListView)
    for operand in (1, "x", None):
        with pytest.raises(TypeError):
            view | operand
        with pytest.raises(TypeError):
            operand | view
        with pytest.raises(TypeError):
            logs + operand
        with pytest.raises(TypeError):
            operand + logs
    assert [type(value) for value in view.values()] == [DictView, ListView]
    assert [type(value) for _, value in view.items()] == [DictView, ListView]
    assert isinstance(view.get("user"), DictView)
    assert view.get("absent", 7) == 7
    assert same_json(snapshot(md), before)


@pytest.mark.parametrize("dumps", [json_text, json_size])
def test_a_serializer_error_names_the_value_and_no_other_function(dumps: Callable[[Any], object]) -> None:
    """json_text used to say "json_size: ..." about a value it could not write."""
    with pytest.raises(InvalidValueError, match="is not a JSON value") as caught:
        dumps(RunMetadata({"a": 1}).current() | {"x": object()})
    assert "json_size" not in str(caught.value)
    assert "json_text" not in str(caught.value)


def test_views_equal_plain_containers_both_ways() -> None:
    """A view equals (and json_equal-s) the plain container it shows, from either side, at any depth."""
    md = RunMetadata(NESTED)
    plain = md.current().to_dict()
    view = md.current()
    assert view == plain
    assert plain == view
    assert not view != plain  # noqa: SIM202 - dict's own != must agree with ==
    assert not plain != view  # noqa: SIM202
    assert view != {**plain, "n": 1}
    assert md.get("logs") == plain["logs"]
    assert plain["logs"] == md.get("logs")
    assert md.get("logs") != ["one"]
    assert {"u": view["user"]} == {"u": plain["user"]}
    assert json_equal(view, plain)
    assert json_equal(plain, view)
    assert RunMetadata(view).current() == view
    assert (
        apply(view, [Set("$.user.name", "Ann"), Increment("k", 1)]).metadata
        == apply(plain, [Set("$.user.name", "Ann"), Increment("k", 1)]).metadata
    )


def test_deepcopy_copy_and_pickle() -> None:
    """copy.copy and copy.deepcopy return the view itself (it never changes); pickle round-trips it."""
    view = RunMetadata({"a": [1, {"b": None}]}).current()
    assert copy.copy(view) is view
    assert copy.deepcopy(view) is view
    assert copy.deepcopy({"held": view})["held"] is view
    logs = view["a"]
    assert copy.copy(logs) is logs
    assert copy.deepcopy(logs) is logs
    for clone in (pickle.loads(pickle.dumps(view)), pickle.loads(pickle.dumps(view, protocol=0))):
        assert type(clone) is DictView
        assert clone == view
        assert type(clone["a"]) is ListView
    assert type(pickle.loads(pickle.dumps(logs))) is ListView
    assert DictView({"a": (1, 2)}) == {"a": [1, 2]}
    assert DictView() == {}
    assert ListView() == []
    assert ListView((1, {"a": 1})) == [1, {"a": 1}]
    assert repr(ListView([1])) == "ListView([1])"
    with pytest.raises(TypeError):
        hash(view)
    with pytest.raises(InvalidValueError, match="DictView must be given a dict"):
        DictView([("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="ListView must be given a list"):
        ListView("ab")


def test_to_dict_gives_an_independent_copy() -> None:
    """Mutating what to_dict or to_list returns leaves the buffer as it was."""
    md = RunMetadata({"a": {"b": [1]}})
    plain: Any = md.current().to_dict()
    plain["a"]["b"].append(2)
    listed = md.current()["a"]["b"].to_list()
    listed.append(3)
    assert md.current() == {"a": {"b": [1]}}
    assert json.dumps(md.current().to_dict()) == '{"a": {"b": [1]}}'


def test_current_is_made_once_per_change() -> None:
    """current() costs the top level's width once per change: between changes it is the same view."""
    md = RunMetadata({"n": 1})
    first = md.current()
    assert md.current() is first
    md.set("n", 1)  # changes nothing
    assert md.current() is first
    md.increment("n")
    second = md.current()
    assert second is not first
    assert (first, second) == ({"n": 1}, {"n": 2})
    md.accept(Flush(), {"n": 5})
    assert md.current() == {"n": 6}


def test_views_can_be_passed_back_as_values() -> None:
    """A view read from the buffer is accepted wherever JSON is, nested or not."""
    md = RunMetadata({"items": [1, 2], "user": {"id": "u"}})
    md.set("copy", md.get("items")).set("wrapped", {"user": md.get("user"), "list": [md.get("items")]})
    md.append("items", md.get("user"))
    assert md.current() == {
        "items": [1, 2, {"id": "u"}],
        "user": {"id": "u"},
        "copy": [1, 2],
        "wrapped": {"user": {"id": "u"}, "list": [[1, 2]]},
    }
    assert md.size == json_size(md.current().to_dict())
    other = RunMetadata(md.current())
    other.replace(md.current()["user"])
    assert other.current() == {"id": "u"}
    (text,) = md.drain().texts()
    assert json.loads(text)["operations"][1]["value"] == {"user": {"id": "u"}, "list": [[1, 2]]}


# --------------------------------------------------------------------------- get


def test_get_reads_a_top_level_key_literally() -> None:
    """get returns values, and None for absent keys and nulls; a container comes back as a view."""
    md = RunMetadata({"n": 1, "a.b": "dotted", "items": [1, {"a": 2}], "nothing": None})
    assert md.get("n") == 1
    assert md.get("a.b") == "dotted"
    assert md.get("absent") is None
    assert md.get("nothing") is None
    items = md.get("items")
    assert isinstance(items, ListView)
    assert items == [1, {"a": 2}]
    assert isinstance(items[1], DictView)
    assert items[1:] == [{"a": 2}]
    assert {"a": 2} in items
    with pytest.raises(InvalidValueError, match="get: key must be a str"):
        md.get(1)  # type: ignore[arg-type]


def test_get_takes_paths_as_the_update_methods_do() -> None:
    """get("$.a.b") reads the path (it used to read a top-level key named "$.a.b" and return None)."""
    md = RunMetadata(
        {
            "a": {"b": 1, "list": [10, 20, {"c": "deep"}], "null": None},
            "runs": [{"rows": 2, "tags": ["x"]}, {"rows": 5, "tags": ["y", "z"]}],
            "grid": [[["a"], "b"], [["c"]]],
            "$.a.b": "a key named like a path",
        }
    )
    assert md.get("$.a.b") == 1
    assert md.get("$.a.list.1") == 20
    assert md.get("$.a.list.2.c") == "deep"
    assert isinstance(md.get("$.a"), DictView)
    assert isinstance(md.get("$.a.list"), ListView)
    assert md.current()["$.a.b"] == "a key named like a path"
    for absent in ("$.absent", "$.a.absent.deeper", "$.a.list.9", "$.a.list.name", "$.a.null", "$.a.b.c"):
        assert md.get(absent) is None, absent
    # Through a wildcard: the first match, as an update there reads it (an increment adds to it).
    assert md.get("$.runs.*.rows") == 2
    assert md.get("$.*.b") == 1
    # A list found through a wildcard is flattened one level per wildcard crossed.
    assert md.get("$.runs.*") == {"rows": 2, "tags": ["x"]}
    assert md.get("$.grid.*") == ["a", "b"]
    assert md.get("$.grid.*.*") == ["a"]
    assert md.increment("$.runs.*.rows").get("$.runs.1.rows") == 3
    with pytest.raises(InvalidOperationError, match=r"get: the key '\$\.constructor' is unsafe"):
        md.get("$.constructor")
    with pytest.raises(InvalidOperationError, match="unsafe"):
        md.get("__proto__")
    with pytest.raises(InvalidOperationError, match="unsafe"):
        md.get("$.")


_NOT_LISTS = json_values().filter(lambda value: not isinstance(value, list))


@budget(3)
@given(initial=metadata(max_leaves=8), key=keys(unsafe=False), value=_NOT_LISTS)
def test_get_reads_back_what_set_wrote_at_the_same_key(initial: Metadata, key: str, value: Any) -> None:
    """For any metadata and key: once set(key, v) changed the metadata, get(key) is v."""
    md = RunMetadata(initial, limit=10**7)
    before = md.current()
    md.set(key, value)
    if md.current() is not before and not md.unapplied:
        assert same_json(md.get(key), value)
