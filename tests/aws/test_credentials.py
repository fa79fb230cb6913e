"""The IAM credentials .csv in each form AWS has shipped, and clear errors for anything else.

Nothing is simulated: these are files shaped like the console's downloads, parsed by the installer's code.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.provider.aws.credentials import CredentialsError, parse_credentials, read_credentials

KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_two_column_access_keys_file_is_read() -> None:
    creds = parse_credentials(f"Access key ID,Secret access key\n{KEY},{SECRET}\n")
    assert creds.access_key_id == KEY
    assert creds.secret_access_key.get_secret_value() == SECRET
    assert creds.user is None


def test_three_column_user_file_is_read() -> None:
    creds = parse_credentials(f"User Name,Access Key Id,Secret Access Key\nalice,{KEY},{SECRET}\n")
    assert (creds.user, creds.access_key_id) == ("alice", KEY)


def test_five_column_new_user_file_with_bom_and_crlf_is_read() -> None:
    text = (
        "\ufeffUser name,Password,Access key ID,Secret access key,Console login link\r\n"
        f"bob,p4ss,{KEY},{SECRET},https://123456789012.signin.aws.amazon.com/console\r\n"
    )
    creds = parse_credentials(text)
    assert (creds.user, creds.access_key_id, creds.secret_access_key.get_secret_value()) == ("bob", KEY, SECRET)


def test_columns_are_matched_by_name_in_any_order_and_case() -> None:
    creds = parse_credentials(f"SECRET ACCESS KEY,access key id\n{SECRET},{KEY}\n")
    assert creds.access_key_id == KEY


def test_a_file_read_from_disk_keeps_its_crlf_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "credentials.csv"
    path.write_bytes(f"\ufeffAccess key ID,Secret access key\r\n{KEY},{SECRET}\r\n".encode())
    assert read_credentials(path).access_key_id == KEY


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        (f"{KEY},{SECRET}\n", "no header row"),
        (f"Access key ID,Password\n{KEY},{SECRET}\n", "no 'Secret access key' column"),
        ("Access key ID,Secret access key\n", "no key"),
        (f"Access key ID,Secret access key\n{KEY},{SECRET}\n{KEY},{SECRET}\n", "more than one key"),
        (f"Access key ID,Secret access key,Region\n{KEY},{SECRET},us-east-1\n", "unexpected column 'Region'"),
        (f"Access key ID,Secret access key\n{KEY}\n", "line 2 has 1 fields"),
        (f"Access key ID,Secret access key\nnot-a-key,{SECRET}\n", "not an AWS access key id"),
        (f"Access key ID,Secret access key\n{KEY},short\n", "secret access key is malformed"),
    ],
)
def test_anything_else_is_refused_with_a_message_that_never_shows_the_secret(text: str, message: str) -> None:
    with pytest.raises(CredentialsError) as caught:
        parse_credentials(text, "creds.csv")
    assert message in str(caught.value)
    assert str(caught.value).startswith("creds.csv: ")
    assert SECRET not in str(caught.value)


def test_a_file_that_is_not_utf8_or_missing_is_refused(tmp_path: Path) -> None:
    binary = tmp_path / "creds.xlsx"
    binary.write_bytes(b"PK\x03\x04\xff\xfe")
    with pytest.raises(CredentialsError, match="not UTF-8"):
        read_credentials(binary)
    with pytest.raises(CredentialsError, match="cannot read"):
        read_credentials(tmp_path / "missing.csv")


def test_the_secret_is_hidden_in_reprs() -> None:
    creds = parse_credentials(f"Access key ID,Secret access key\n{KEY},{SECRET}\n")
    assert SECRET not in repr(creds)
    assert SECRET not in str(creds.model_dump())
