import json

import pytest

from transform import spec as spec_lib
from transform.datasets import hillstrom, synthetic

VALID = {
    "name": "shop",
    "features": [{"name": "country", "kind": "categorical"},
                 {"name": "age", "kind": "numeric", "scaling": "min_max"}],
    "chain": {"steps": ["click", "buy"], "core_target": "amount", "core_target_gated": True},
    "slices": ["country", ["country", "age"]],
    "split": {"eval_percent": 10},
}


def test_yaml_and_json_load_to_the_same_spec(tmp_path):
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(VALID))
    (tmp_path / "s.json").write_text(json.dumps(VALID))
    from_yaml = spec_lib.load(str(tmp_path / "s.yaml"))
    assert from_yaml == spec_lib.load(str(tmp_path / "s.json"))
    assert from_yaml.columns == ("country", "age", "click", "buy", "amount")
    assert from_yaml.slices == (("country",), ("country", "age"))
    assert from_yaml.chain.previous_step("buy") == "click"
    assert from_yaml.chain.previous_step("click") is None


def test_json_round_trip_of_builtin_specs():
    for spec in (hillstrom.SPEC, synthetic.SPEC):
        assert spec_lib.DatasetSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("change, message", [
    (lambda d: d["features"][0].update(kind="cat"), "features[0] ('country'): kind must be one of"),
    (lambda d: d["features"][1].update(scaling="log"), "features[1] ('age'): scaling must be one of"),
    (lambda d: d["features"][0].update(colour="red"), "features[0]: unknown field(s) ['colour']"),
    (lambda d: d["chain"].update(steps=["click", "country"]), "column 'country' is used twice"),
    (lambda d: d.update(slices=["weather"]), "slices[0] names 'weather', which is not a feature"),
    (lambda d: d["split"].update(eval_percent=0), "split.eval_percent must be between 1 and 99"),
    (lambda d: d["split"].update(partition_column="user"), "split.partition_column 'user' is not a column"),
    (lambda d: d["split"].update(partition_column="age"), "split.partition_column 'age' is a float column"),
    (lambda d: d["split"].update(partition_column="amount"), "split.partition_column 'amount' is a float column"),
    (lambda d: d.pop("chain"), "missing required field 'chain'"),
])
def test_malformed_spec_names_file_and_field(tmp_path, change, message):
    data = json.loads(json.dumps(VALID))
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(spec_lib.SpecError) as raised:
        spec_lib.load(str(path))
    assert str(path) in str(raised.value)
    assert message in str(raised.value)
