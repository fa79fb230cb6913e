"""The CloudFormation templates the rack renders: ``cloudformation/rack.yml`` as it is, ``app.yml`` per app.

Jinja2 renders the app template (a loop over process types and ports); the rack template has parameters
only. Every rendered template passes cfn-lint with no error (tests/aws/test_templates.py).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from pydantic import Field

from shared.models import Model

_PACKAGED = Path(__file__).resolve().parent / "cloudformation"
_SOURCE = Path(__file__).resolve().parents[3] / "cloudformation"
_LOGICAL = re.compile(r"[^A-Za-z0-9]+")


def template_dir() -> Path:
    """``cloudformation/`` of a checkout, else the copy packaged into the wheel."""
    return _SOURCE if (_SOURCE / "rack.yml").is_file() else _PACKAGED


@cache
def _read(name: str) -> str:
    return (template_dir() / name).read_text()


def rack_template() -> str:
    return _read("rack.yml")


def logical_id(name: str) -> str:
    """``web-api`` -> ``WebApi``: a CloudFormation logical id (letters and digits only)."""
    return "".join(part[:1].upper() + part[1:] for part in _LOGICAL.split(name) if part)


class PortMap(Model):
    port: int = Field(ge=1, le=65535, description="The balancer's port.")
    container: int = Field(ge=1, le=65535, description="The container's port.")


class ProcessPorts(Model):
    """One process type's ports: public ones get a listener on an internet-facing balancer, internal ones an
    internal balancer only."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,29}$")
    public: list[PortMap] = Field(default_factory=list)
    internal: list[PortMap] = Field(default_factory=list)


def app_template(rack: str, app: str, processes: list[ProcessPorts], retention: int = 30) -> str:
    """The app's stack: log group, ECR repository, security groups, and balancers only where ports are."""
    from jinja2 import Environment, StrictUndefined  # only rendering pays for it

    env = Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)  # YAML, not HTML
    rows = [
        {
            "name": p.name,
            "logical": logical_id(p.name),
            "public": [m.model_dump() for m in p.public],
            "internal": [m.model_dump() for m in p.internal],
        }
        for p in processes
    ]
    logicals = [r["logical"] for r in rows]
    if len(set(logicals)) != len(logicals):
        raise ValueError(f"process names collide as CloudFormation ids: {', '.join(p.name for p in processes)}")
    return env.from_string(_read("app.yml")).render(rack=rack, app=app, processes=rows, retention=retention)


def resource_template(rack: str, name: str, engine: str, version: str, port: int, clients: list[str]) -> str:
    """A backing service's stack on RDS (``engine`` postgres, mysql or mariadb at ``version`` on ``port``), connections
    allowed from the ``clients`` security groups only."""
    from jinja2 import Environment, StrictUndefined

    if not clients:
        raise ValueError("a backing service needs the rack's security groups (nothing could reach it)")
    env = Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)  # YAML, not HTML
    return env.from_string(_read("resource-rds.yml")).render(
        rack=rack, name=name, engine=engine, version=version, port=port, clients=clients
    )
