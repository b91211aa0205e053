"""No command prints a password, a token or a signing secret in full: config errors, and the errors
redis-py and psycopg2 raise, as the CLIs (consumer, models, receiver) turn them into one line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from harness import SECRET, free_port

PASSWORD = "hunter2-Zq8"


def run(cli, args: list[str], **env: str) -> str:
    base = {"REDIS_URL": "", "DATABASE_URL": "", "STRIPE_WEBHOOK_SECRET": SECRET, "API_TOKEN": "", "TIERS_FILE": ""}
    result = CliRunner().invoke(cli, args, env={**base, **env})
    assert result.exit_code != 0, result.output
    return result.output + (repr(result.exception) if not isinstance(result.exception, SystemExit) else "")


def consumer_cli():
    from consumer.cli import cli

    return cli


def models_cli():
    from models.__main__ import cli

    return cli


@pytest.mark.parametrize(
    "redis_url",
    [
        f"redis://:{PASSWORD}@127.0.0.1:{{port}}/0",
        f"redis://default:{PASSWORD}@127.0.0.1:{{port}}/0",
        # unencoded '/' in the password: urllib takes "hunter2-Z" for the port and says so
        "redis://:hunter2-Z/q8@127.0.0.1:{port}/0",
        f"redis+cluster://:{PASSWORD}@127.0.0.1:{{port}},127.0.0.1:{{port}}",
        f"redis+sentinel://:{PASSWORD}@127.0.0.1:{{port}}/mymaster?sentinel_password={PASSWORD}",
        f"redis+sentinel://127.0.0.1:{{port}}/mymaster?sentinel_password={PASSWORD}",
        "redis+cluster://:hunter2-Z/q8@127.0.0.1:{port}/5",
    ],
)
def test_consumer_commands_never_print_the_redis_password(tmp_path, redis_url):
    output = run(
        consumer_cli(),
        ["stats"],
        REDIS_URL=redis_url.format(port=free_port()),
        DATABASE_URL=f"sqlite:///{tmp_path}/x.db",
    )
    assert "hunter2" not in output and "q8@" not in output, output
    assert "REDIS_URL" in output or "Redis unreachable at redis" in output, output


def test_an_unreachable_database_is_named_without_its_password():
    url = f"postgresql://billing:{PASSWORD}@127.0.0.1:{free_port()}/billing"
    output = run(models_cli(), ["migrate"], DATABASE_URL=url)
    assert "database unreachable" in output and PASSWORD not in output, output


@pytest.mark.parametrize("cli,args", [(consumer_cli, ["stats"]), (models_cli, ["migrate"])])
@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://billing:{PASSWORD}@127.0.0.1:port/billing",
        "postgresql://billing:hunter2-Z/q8@127.0.0.1:5432/billing",
    ],
)
def test_a_bad_database_url_is_named_without_its_password(cli, args, url):
    output = run(cli(), args, DATABASE_URL=url)
    assert "DATABASE_URL='postgresql://billing:***@127.0.0.1" in output, output
    assert "hunter2" not in output and "q8@" not in output, output


def test_a_live_key_given_as_the_webhook_secret_is_shown_by_its_prefix():
    from receiver.__main__ import cli

    key = "sk_live_51HqLyjWDarjtT1zdp7dcXpzy0OZjB6HnSmdkQ7"
    output = run(cli, ["serve"], STRIPE_WEBHOOK_SECRET=key)
    assert "sk_live_…" in output and key[8:] not in output, output
    output = run(consumer_cli(), ["stats"], STRIPE_WEBHOOK_SECRET=f"whsec_abc123def456,{key}")
    assert "sk_live_…" in output and key[8:] not in output and "whsec_abc123" not in output, output


def test_send_never_prints_a_password_in_its_url(tmp_path):
    from receiver.__main__ import cli

    url = f"http://hook:{PASSWORD}@127.0.0.1:{free_port()}/webhooks/stripe"
    output = run(cli, ["send", "invoice.paid", "--community", "c1", "--url", url])
    assert "could not reach http://hook:***@127.0.0.1" in output and PASSWORD not in output, output
