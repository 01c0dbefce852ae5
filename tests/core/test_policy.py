import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.core.policy import Policy, ProductKind, load_policy, policy_schema
from orchestrator.core.steps import StepKind
from orchestrator.core.yamlerrors import PolicyError
from orchestrator.faces.cli import app
from tests.conftest import REPO

PROFILES = ["klikserver", "cybernet", "herza", "cbncloud", "cloudmatika"]


def test_five_profiles_ship(policies: dict[str, Policy]) -> None:
    assert sorted(policies) == sorted(PROFILES)


@pytest.mark.parametrize("name", PROFILES)
def test_every_step_cites_a_clause(policies: dict[str, Policy], name: str) -> None:
    for product in policies[name].products.values():
        for ladder in product.ladders:
            for step in ladder.steps:
                assert len(step.clause) > 10, (name, step)


def test_colocation_is_never_wiped(policies: dict[str, Policy]) -> None:
    sellers = [p for p in policies.values() if ProductKind.COLOCATION in p.products]
    assert sorted(p.name for p in sellers) == ["herza", "klikserver"]
    for policy in sellers:
        colo = policy.products[ProductKind.COLOCATION]
        steps = {s.step.value for ladder in colo.ladders for s in ladder.steps}
        assert "purge" not in steps and "terminate" not in steps
        assert "hand_over" in steps


@pytest.mark.parametrize("name", PROFILES)
def test_legal_hold_keeps_the_data(policies: dict[str, Policy], name: str) -> None:
    legal = policies[name].holds["legal"]
    assert set(legal.blocks) >= {s for s in StepKind if s.takes_data}
    assert StepKind.SUSPEND not in legal.blocks  # it does not keep an unpaid service running


def test_a_legal_hold_that_lets_a_purge_through_is_refused(tmp_path: Path) -> None:
    path = _broken(tmp_path, "blocks: [terminate, purge, hand_over]", "blocks: [terminate]")
    with pytest.raises(PolicyError, match="legal hold must block terminate, purge and hand_over"):
        load_policy(path)


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    text = (REPO / "inventory/policies/klikserver.yaml").read_text()
    assert old in text
    path = tmp_path / "broken.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def _line_of(path: Path, needle: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_misspelled_field_is_named_with_its_line(tmp_path: Path) -> None:
    path = _broken(tmp_path, "    ip_quarantine: 30d", "    ip_quarantime: 30d")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    problem = next(p for p in caught.value.problems if "quarantime" in p.field)
    assert problem.line == _line_of(path, "ip_quarantime")
    assert "unknown field" in problem.message


def test_negative_offset_is_named_with_its_line(tmp_path: Path) -> None:
    path = _broken(tmp_path, "after: 5d", "after: -5d")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    problem = caught.value.problems[0]
    assert problem.field.endswith("after")
    assert problem.line == _line_of(path, "-5d")
    assert "negative" in problem.message


def test_policy_check_cli_exits_non_zero_and_names_field_and_line(tmp_path: Path) -> None:
    path = _broken(tmp_path, "after: 8d", "after: -8d")
    before = path.read_text()
    result = CliRunner().invoke(app, ["policy", "check", str(path)])
    assert result.exit_code == 1
    line = _line_of(path, "-8d")
    assert f"{path}:{line}:" in result.output and "after" in result.output
    assert path.read_text() == before


def test_policy_check_cli_accepts_the_shipped_profiles() -> None:
    files = [str(REPO / f"inventory/policies/{name}.yaml") for name in PROFILES]
    result = CliRunner().invoke(app, ["policy", "check", *files])
    assert result.exit_code == 0, result.output


def test_schema_describes_offsets_and_forbids_unknown_fields() -> None:
    schema = policy_schema()
    assert schema["additionalProperties"] is False
    result = CliRunner().invoke(app, ["policy", "schema"])
    assert json.loads(result.output)["title"] == "Policy"
    assert "pattern" in json.dumps(schema["$defs"]["LadderStep"]["properties"]["after"])


def test_suspend_without_method_is_refused(tmp_path: Path) -> None:
    path = _broken(tmp_path, "            method: pause\n", "")
    with pytest.raises(PolicyError, match="needs a method"):
        load_policy(path)
