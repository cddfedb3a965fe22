"""Policy file validation: the shipped default, every bad-YAML case named by file, line and field, the JSON schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.control.config import DEFAULT_POLICY_PATH, ConfigError, PolicyFile, policy_json_schema
from orchestrator.control.policy_loader import load_policy_file

DEFAULT_TEXT = DEFAULT_POLICY_PATH.read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def edited(old: str, new: str) -> str:
    """The default file with one exact fragment replaced (so line numbers stay those of the default)."""
    assert DEFAULT_TEXT.count(old) == 1, old
    return DEFAULT_TEXT.replace(old, new)


def line_of(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_policy_file(path)
    return str(e.value)


def test_default_file_loads_with_the_documented_prices_bounds_and_slo():
    cfg = PolicyFile.default()
    assert cfg == load_policy_file(DEFAULT_POLICY_PATH)
    cloud, edge = cfg.pools["cloud"], cfg.pools["edge"]
    assert (cloud.engine, cloud.cost_per_hour_usd, cloud.min_replicas, cloud.max_replicas, cloud.startup_s) == (
        "vllm", 2.5, 0, 2, 45)
    assert (edge.engine, edge.cost_per_hour_usd, edge.min_replicas, edge.max_replicas, edge.startup_s) == (
        "transformers", 0.1, 1, 3, 10)
    assert (cfg.slo.ttft_p95_s, cfg.slo.e2e_p95_s) == (2.0, 20.0)
    assert cfg.policy.name == "cost_aware"


@pytest.mark.parametrize(
    ("old", "new", "at", "field", "message"),
    [
        ("    max_replicas: 3 ", "    max_replica: 3 ", "max_replica:", "pools.edge.max_replica",
         "unknown field 'max_replica' (did you mean 'max_replicas'?)"),
        ("  cooldown_s: 20", "  cooldown: 20", "cooldown:", "guardrails.cooldown", "unknown field 'cooldown'"),
        ("  stale_after_s: 30", "  stale_after_s: soon", "stale_after_s:", "guardrails.stale_after_s",
         "Input should be a valid number, unable to parse string as a number (got 'soon')"),
        ("    replicas_per_node: 1\n    min_replicas: 0", "    replicas_per_node: [1]\n    min_replicas: 0",
         "replicas_per_node: [1]", "pools.cloud.replicas_per_node", "Input should be a valid integer"),
        ("    engine: transformers", "    engine: onnx", "engine: onnx", "pools.edge.engine",
         "Input should be 'vllm' or 'transformers' (got 'onnx')"),
        ("    cost_per_hour_usd: 2.5 ", "    cost_per_hour_usd: -2.5 ", "cost_per_hour_usd: -2.5",
         "pools.cloud.cost_per_hour_usd", "Input should be greater than or equal to 0 (got -2.5)"),
        ("    min_replicas: 1 ", "    min_replicas: 4 ", "max_replicas: 3", "pools.edge.max_replicas",
         "min_replicas 4 is greater than max_replicas 3"),
        ("  name: cost_aware ", "  name: cost_awar ", "name: cost_awar", "policy.name",
         "unknown policy 'cost_awar' (did you mean 'cost_aware'?); expected one of cost_aware, kpa, queue_target"),
        ("  name: cost_aware ", "  name: nowhere.policies:fn ", "name: nowhere", "policy.name",
         "policy 'nowhere.policies:fn': cannot import module 'nowhere.policies'"),
        ("  name: cost_aware ", "  name: not a name ", "name: not a name", "policy.name",
         "'not a name' is neither a policy name nor \"package.module:function\""),
        ("    slo_margin: 0.8 ", "    slo_marg: 0.8 ", "slo_marg:", "policy.knobs.slo_marg",
         "unknown field 'slo_marg' (did you mean 'slo_margin'?)"),
        ("    slo_margin: 0.8 ", "    slo_margin: 1.5 ", "slo_margin: 1.5",
         "policy.knobs.slo_margin", "Input should be less than or equal to 1 (got 1.5)"),
        ("  max_step_per_tick_by_pool: {}", "  max_step_per_tick_by_pool: {gpu: 1}", "max_step_per_tick_by_pool:",
         "guardrails.max_step_per_tick_by_pool.gpu",
         "max_step_per_tick_by_pool names pool 'gpu', which is not one of the pools ['cloud', 'edge']"),
        ("  budget_usd_per_hour: null ", "  budget_usd_per_hour: 0.05 ", "budget_usd_per_hour:",
         "guardrails.budget_usd_per_hour",
         "budget_usd_per_hour 0.05 is below the cost of the minimum fleet (0.1 $/h from min_replicas)"),
        ("tick_interval_s: 5", "tick_interval_s: 0", "tick_interval_s:", "tick_interval_s",
         "Input should be greater than 0 (got 0)"),
    ],
)
def test_bad_policy_file_error_names_the_file_the_line_and_the_field(tmp_path, old, new, at, field, message):
    text = edited(old, new)
    err = error_of(tmp_path, text)
    assert f"{tmp_path / 'policy.yaml'}:{line_of(text, at)}: {field}: {message}" in err, err


def test_a_missing_required_field_points_at_its_parent(tmp_path):
    text = edited("    startup_s: 10\n", "")
    err = error_of(tmp_path, text)
    assert f":{line_of(text, '  edge:')}: pools.edge.startup_s: required field is missing" in err


def test_every_problem_is_reported_in_line_order(tmp_path):
    text = edited("  cooldown_s: 20", "  cooldown_s: -1").replace("cost_per_hour_usd: 0.1", "cost_per_hour_usd: x")
    err = error_of(tmp_path, text)
    assert "(2 problems)" in err
    assert err.index("pools.edge.cost_per_hour_usd") < err.index("guardrails.cooldown_s")


def test_yaml_syntax_error_names_the_line(tmp_path):
    text = edited("  ttft_p95_s: 2.0", "  ttft_p95_s: [2.0")
    assert f"policy.yaml:{line_of(text, 'e2e_p95_s') }: not valid YAML" in error_of(tmp_path, text)


def test_a_duplicate_key_is_an_error_at_its_second_occurrence(tmp_path):
    text = edited("  cooldown_s: 20", "  cooldown_s: 20\n  cooldown_s: 0")
    err = error_of(tmp_path, text)
    assert f":{line_of(text, 'cooldown_s: 0')}: guardrails.cooldown_s: duplicate key 'cooldown_s'" in err


def test_a_file_that_is_not_a_mapping_or_is_empty_or_missing_is_refused(tmp_path):
    assert "expected a mapping (policy file), got list" in error_of(tmp_path, "- pools\n")
    assert "policy.yaml:1: pools: required field is missing" in error_of(tmp_path, "")
    with pytest.raises(ConfigError, match="nope.yaml: cannot read"):
        load_policy_file(tmp_path / "nope.yaml")


def test_an_import_path_policy_is_accepted_when_it_resolves(tmp_path):
    data = yaml.safe_load(DEFAULT_TEXT)
    data["policy"] = {"name": "tests.unit.test_control_policies:fixed_policy"}
    cfg = load_policy_file(write(tmp_path, yaml.safe_dump(data)))
    assert cfg.policy.name.endswith(":fixed_policy")


def test_json_schema_exports_and_validates_the_default_file():
    schema = policy_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load(DEFAULT_TEXT), schema)
    bad = yaml.safe_load(DEFAULT_TEXT)
    bad["pools"]["edge"]["max_replica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="max_replica"):
        jsonschema.validate(bad, schema)


def test_every_schema_field_has_a_description():
    schema = policy_json_schema()
    for name, model in [("PolicyFile", schema), *schema["$defs"].items()]:
        for field, spec in model.get("properties", {}).items():
            assert spec.get("description"), f"{name}.{field} has no description"


# --- `elo policy` ---------------------------------------------------------------------------------------------------

runner = CliRunner()
ENV = {"COLUMNS": "200"}


def test_elo_policy_validate_summarises_a_good_file():
    from orchestrator.cli import app

    result = runner.invoke(app, ["policy", "validate", str(DEFAULT_POLICY_PATH)], env=ENV)
    assert result.exit_code == 0, result.output
    assert "valid policy" in result.output and "cost_aware" in result.output
    assert "fleet cost: 0.10-5.30 $/h" in result.output


def test_elo_policy_validate_prints_the_error_and_exits_2(tmp_path):
    from orchestrator.cli import app

    path = write(tmp_path, edited("  cooldown_s: 20", "  cooldown: 20"))
    result = runner.invoke(app, ["policy", "validate", str(path)], env=ENV)
    assert result.exit_code == 2
    assert f"{path}:{line_of(path.read_text(), 'cooldown: 20')}: guardrails.cooldown: unknown field" in result.output


def test_elo_policy_schema_prints_or_writes_the_schema(tmp_path):
    from orchestrator.cli import app

    result = runner.invoke(app, ["policy", "schema"], env=ENV)
    assert result.exit_code == 0 and json.loads(result.output) == policy_json_schema()
    out = tmp_path / "schema.json"
    result = runner.invoke(app, ["policy", "schema", "--out", str(out)], env=ENV)
    assert result.exit_code == 0 and json.loads(out.read_text()) == policy_json_schema()
