"""IAM credentials for ``convox rack install aws``: the ``.csv`` files AWS has shipped, else the standard chain.

The console has handed out three shapes of ``credentials.csv`` over the years, all with a header row:

- 2 columns: ``Access key ID,Secret access key`` (``*_accessKeys.csv``, today's "Download .csv file");
- 3 columns: ``User Name,Access Key Id,Secret Access Key`` (the old IAM user download);
- 5 columns: ``User name,Password,Access key ID,Secret access key,Console login link`` (the new-user wizard).

Columns are found by header name, case- and space-insensitively, in any order; CRLF line ends and a UTF-8
byte-order mark are accepted. Anything else is refused with a message that never contains the secret.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from shared.models import Model

_ACCESS = ("accesskeyid",)
_SECRET = ("secretaccesskey",)
_ACCESS_PATTERN = re.compile(r"^(AKIA|ASIA)[A-Z0-9]{12,124}$")


class CredentialsError(ValueError):
    """A credentials file that cannot be used; the message names the file and never the secret."""


class AwsCredentials(Model):
    access_key_id: str
    secret_access_key: SecretStr
    user: str | None = None

    def session_args(self) -> dict[str, str]:
        secret = self.secret_access_key.get_secret_value()
        return {"aws_access_key_id": self.access_key_id, "aws_secret_access_key": secret}


def _key(header: str) -> str:
    return re.sub(r"[^a-z]", "", header.lower())


def parse_credentials(text: str, source: str = "credentials file") -> AwsCredentials:
    """The access key in ``text`` (a credentials .csv's content)."""
    text = text.removeprefix("\ufeff")
    rows = [row for row in csv.reader(io.StringIO(text, newline="")) if any(cell.strip() for cell in row)]
    if not rows:
        raise CredentialsError(f"{source}: empty; expected the .csv AWS gives with an access key")
    header = [_key(cell) for cell in rows[0]]
    known = {"accesskeyid", "secretaccesskey", "username", "password", "consoleloginlink"}
    if not set(header) & {"accesskeyid", "secretaccesskey"}:
        raise CredentialsError(
            f"{source}: no header row naming 'Access key ID' and 'Secret access key' "
            "(expected the 2, 3 or 5 column .csv from the IAM console)"
        )
    columns = (("Access key ID", _ACCESS), ("Secret access key", _SECRET))
    missing = [name for name, keys in columns if keys[0] not in header]
    if missing:
        raise CredentialsError(f"{source}: no {' or '.join(repr(m) for m in missing)} column")
    unknown = [rows[0][i].strip() for i, h in enumerate(header) if h not in known]
    if unknown:
        raise CredentialsError(f"{source}: unexpected column {', '.join(repr(u) for u in unknown)}")
    if len(rows) < 2:
        raise CredentialsError(f"{source}: a header but no key (the second line is missing)")
    if len(rows) > 2:
        raise CredentialsError(f"{source}: more than one key ({len(rows) - 1} rows); keep the one to use")
    row = rows[1]
    if len(row) != len(header):
        raise CredentialsError(f"{source}: line 2 has {len(row)} fields, the header {len(header)}")
    values: dict[str, str] = {h: cell.strip() for h, cell in zip(header, row, strict=True)}
    access, secret = values["accesskeyid"], values["secretaccesskey"]
    if not _ACCESS_PATTERN.fullmatch(access):
        raise CredentialsError(f"{source}: the access key id is not an AWS access key id (AKIA... or ASIA...)")
    if len(secret) < 16 or any(c.isspace() for c in secret):
        raise CredentialsError(f"{source}: the secret access key is malformed (its value is not shown)")
    user = values.get("username") or None
    return AwsCredentials(access_key_id=access, secret_access_key=SecretStr(secret), user=user)


def read_credentials(path: Path) -> AwsCredentials:
    """Parse a credentials .csv file (small: read at once; callers on an event loop use a thread)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CredentialsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > 64 * 1024:
        raise CredentialsError(f"{path}: too large for a credentials .csv ({len(data)} bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialsError(f"{path}: not UTF-8 text; expected the .csv AWS gives") from None
    return parse_credentials(text, str(path))


def session(credentials: AwsCredentials | None, region: str | None) -> Any:
    """An ``aioboto3.Session`` from the file's key, else from the standard chain (env, profile, role)."""
    import aioboto3  # lazily: only AWS work pays for it

    kwargs: dict[str, str] = credentials.session_args() if credentials else {}
    if region:
        kwargs["region_name"] = region
    return aioboto3.Session(**kwargs)
