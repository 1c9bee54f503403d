"""docs/rbac.md is the code's: its tables are rendered here from
vhdkit/registry/rbac.py (MATRIX, the role groups) and its default property
rules are vhdkit/registry/protections.py's DEFAULT_RULES, so the document
cannot drift from what the registry enforces."""
from __future__ import annotations

from pathlib import Path

from vhdkit.registry import rbac
from vhdkit.registry.protections import DEFAULT_RULES

DOC = Path(__file__).resolve().parent.parent / "docs" / "rbac.md"

GROUPS = (("Observer", rbac.OBSERVERS), ("Creator", rbac.CREATORS), ("Admin", rbac.ADMINS))
SCOPES = {None: "", "visible": "any account that sees the image", "owner": "the owner's account",
          "member": "the member's account itself"}


def roles_table() -> str:
    rows = ["| role | group |", "|---|---|"]
    for name, roles in GROUPS:
        rows += [f"| `{r}` | {name} |" for r in sorted(roles)]
    rows.append(f"| `{rbac.SERVICE}` | the service (never from a request) |")
    return "\n".join(rows) + "\n"


def operations_table() -> str:
    rows = ["| operation | API | roles | account |", "|---|---|---|---|"]
    for op, rule in rbac.MATRIX.items():
        groups = [name for name, roles in GROUPS if roles <= rule.roles]
        covered = set().union(*(roles for name, roles in GROUPS if name in groups)) | {rbac.SERVICE}
        assert covered == set(rule.roles), (op, "a rule that is not a union of the groups")
        rows.append(f"| {op.replace('_', ' ')} | `{rule.api.replace(' (ext)', '')}` | {', '.join(groups)} | "
                    f"{SCOPES[rule.scope]} |")
    return "\n".join(rows) + "\n"


def _section(name: str) -> str:
    text = DOC.read_text()
    return text.split(f"<!-- {name}: generated -->\n", 1)[1].split(f"<!-- end of {name} -->")[0]


def test_the_roles_are_the_codes():
    assert _section("roles") == roles_table()


def test_the_operations_are_the_codes():
    assert _section("operations") == operations_table()


def test_the_default_property_rules_are_the_codes():
    assert _section("property rules") == f"```ini\n{DEFAULT_RULES}```\n"


def test_the_readme_links_the_repositorys_copy():
    readme = (DOC.parent.parent / "README.md").read_text()
    assert "../shared/RBAC.md" not in readme and "(docs/rbac.md)" in readme
