"""The Cloud Tasks part of the plan: the queue of delayed events and the IAM a task needs, as
data, gcloud commands and Terraform; its IAM applied at the client seam. (Provisioned and
checked against the local broker in tests/broker/test_tasks_provisioning.py.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.iam.v1 import policy_pb2  # type: ignore[import-untyped]

from homing import ConfigurationError, Settings
from homing.cli import main
from homing.provisioning import (
    IamBinding,
    TaskQueue,
    apply_iam,
    plan,
    render_gcloud,
    render_terraform,
)
from tests.test_provisioning import FakeIamClient, full_settings
from tests.test_provisioning import terraform as terraform  # the fixture

PUSHER = "pusher@homing-test.iam.gserviceaccount.com"
TASKER = "tasks@homing-test.iam.gserviceaccount.com"
SERVICE_ACCOUNT = "api@homing-test.iam.gserviceaccount.com"
QUEUE = "projects/homing-test/locations/europe-west1/queues/delayed"
SERVICE = "projects/homing-test/locations/europe-west1/services/api"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HOMING_") or name in ("GOOGLE_CLOUD_PROJECT", "PUBSUB_EMULATOR_HOST"):
            monkeypatch.delenv(name)


def tasks_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "tasks_queue": "delayed",
        "region": "europe-west1",
        "run_service": "api",
        "tasks_service_account": TASKER,
        "tasks_enqueuer": SERVICE_ACCOUNT,
    }
    return full_settings(**(values | overrides))


def tasks_bindings(settings: Settings) -> list[tuple[str, str, str, str | None]]:
    return [
        (b.kind, b.resource, b.role, b.member)
        for b in plan(settings).bindings
        if b.purpose == "tasks"
    ]


def test_the_plan_has_the_queue_with_its_rate_limits_and_retry_config() -> None:
    the_plan = plan(
        tasks_settings(
            tasks_max_dispatches_per_second=12.5,
            tasks_max_concurrent_dispatches=40,
            tasks_min_backoff=0.5,
            tasks_max_backoff=300.0,
            tasks_max_doublings=4,
            max_delivery_attempts=8,
        )
    )
    assert the_plan.queue == TaskQueue(
        name=QUEUE,
        max_dispatches_per_second=12.5,
        max_concurrent_dispatches=40,
        max_attempts=8,  # the same limit the push endpoint takes for the last attempt
        min_backoff=0.5,
        max_backoff=300.0,
        max_doublings=4,
    )
    assert the_plan.queue.parts == ("homing-test", "europe-west1", "delayed")


def test_without_a_tasks_queue_there_is_no_queue_and_no_tasks_binding() -> None:
    the_plan = plan(full_settings())
    assert the_plan.queue is None
    assert [b for b in the_plan.bindings if b.purpose == "tasks"] == []


def test_a_task_needs_the_invoker_the_enqueuer_and_the_service_account_user() -> None:
    assert tasks_bindings(tasks_settings()) == [
        ("queue", QUEUE, "roles/cloudtasks.enqueuer", f"serviceAccount:{SERVICE_ACCOUNT}"),
        (
            "service_account",
            TASKER,
            "roles/iam.serviceAccountUser",
            f"serviceAccount:{SERVICE_ACCOUNT}",
        ),
        ("run_service", SERVICE, "roles/run.invoker", f"serviceAccount:{TASKER}"),
    ]
    for binding in plan(tasks_settings()).bindings:
        assert isinstance(binding, IamBinding)
        assert binding.reason.startswith("to ")


def test_the_tasks_token_defaults_to_the_push_account_whose_invoker_binding_is_not_repeated() -> (
    None
):
    settings = tasks_settings(tasks_service_account=None)
    invokers = [b for b in plan(settings).bindings if b.role == "roles/run.invoker"]
    assert [(b.member, b.purpose) for b in invokers] == [(f"serviceAccount:{PUSHER}", "pubsub")]
    assert ("service_account", PUSHER, "roles/iam.serviceAccountUser") in [
        (kind, resource, role) for kind, resource, role, _ in tasks_bindings(settings)
    ]


def test_without_a_cloud_run_service_there_is_no_tasks_invoker() -> None:
    settings = tasks_settings(run_service=None, region=None, tasks_location="europe-west1")
    assert [role for _, _, role, _ in tasks_bindings(settings)] == [
        "roles/cloudtasks.enqueuer",
        "roles/iam.serviceAccountUser",
    ]


def test_a_full_queue_path_names_its_own_project_and_location() -> None:
    the_plan = plan(tasks_settings(tasks_queue="projects/other-proj/locations/us-east1/queues/q-1"))
    assert the_plan.queue is not None
    assert the_plan.queue.name == "projects/other-proj/locations/us-east1/queues/q-1"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"region": None, "run_service": None},
            "HOMING_TASKS_QUEUE needs a location: set HOMING_TASKS_LOCATION",
        ),
        ({"tasks_location": "Europe"}, "HOMING_TASKS_LOCATION: 'Europe' is not a Cloud Tasks"),
        ({"tasks_queue": "no_underscores"}, "HOMING_TASKS_QUEUE: 'no_underscores' is not a"),
        ({"tasks_queue": "a/b"}, "HOMING_TASKS_QUEUE: 'a/b' is neither a queue id nor"),
        ({"tasks_enqueuer": None}, "HOMING_TASKS_QUEUE needs HOMING_TASKS_ENQUEUER"),
        ({"tasks_enqueuer": "me"}, "HOMING_TASKS_ENQUEUER: 'me' is not a service account"),
        (
            {"tasks_service_account": "x@y"},
            "HOMING_TASKS_SERVICE_ACCOUNT: 'x@y' is not a service account",
        ),
    ],
)
def test_tasks_settings_that_cannot_work_are_refused(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        plan(tasks_settings(**overrides))


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("HOMING_TASKS_MAX_DISPATCHES_PER_SECOND", "501", "at most 500 per second"),
        ("HOMING_TASKS_MAX_DISPATCHES_PER_SECOND", "0", "above 0"),
        ("HOMING_TASKS_MAX_CONCURRENT_DISPATCHES", "0", "from 1 to 5000"),
        ("HOMING_TASKS_MIN_BACKOFF", "-1", "positive number of seconds"),
        ("HOMING_TASKS_MAX_DOUBLINGS", "17", "from 1 to 16"),
    ],
)
def test_tasks_variables_are_checked(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{variable}: must be .*{message}"):
        Settings.from_env({variable: value})


def test_a_minimum_backoff_above_the_maximum_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"HOMING_TASKS_MIN_BACKOFF \(30\) exceeds"):
        Settings.from_env({"HOMING_TASKS_MIN_BACKOFF": "30", "HOMING_TASKS_MAX_BACKOFF": "20"})


def test_the_tasks_account_is_accepted_by_the_push_endpoint_too() -> None:
    settings = tasks_settings()
    assert settings.allowed_push_accounts == (PUSHER, TASKER)
    assert tasks_settings(
        oidc_service_accounts=("only@x.iam.gserviceaccount.com",)
    ).allowed_push_accounts == ("only@x.iam.gserviceaccount.com",)


def test_gcloud_creates_the_queue_and_grants_what_a_task_needs() -> None:
    script = render_gcloud(plan(tasks_settings(tasks_max_dispatches_per_second=2.5)))
    assert (
        "gcloud tasks queues create delayed \\\n"
        "    --project=homing-test \\\n"
        "    --location=europe-west1 \\\n"
        "    --max-dispatches-per-second=2.5 \\\n"
        "    --max-concurrent-dispatches=1000 \\\n"
        "    --max-attempts=5 \\\n"
        "    --min-backoff=10s \\\n"
        "    --max-backoff=600s \\\n"
        "    --max-doublings=16\n"
    ) in script
    assert (
        "gcloud tasks queues add-iam-policy-binding delayed \\\n"
        "    --project=homing-test \\\n"
        "    --location=europe-west1 \\\n"
        f"    --member=serviceAccount:{SERVICE_ACCOUNT} \\\n"
        "    --role=roles/cloudtasks.enqueuer\n"
    ) in script
    assert (
        f"gcloud iam service-accounts add-iam-policy-binding {TASKER} \\\n"
        f"    --member=serviceAccount:{SERVICE_ACCOUNT} \\\n"
        "    --role=roles/iam.serviceAccountUser\n"
    ) in script
    assert f"--member=serviceAccount:{TASKER} \\\n    --role=roles/run.invoker" in script


def test_terraform_has_the_queue_and_the_bindings_a_task_needs() -> None:
    hcl = render_terraform(plan(tasks_settings()))
    assert (
        'resource "google_cloud_tasks_queue" "homing" {\n'
        '  project  = "homing-test"\n'
        '  location = "europe-west1"\n'
        '  name     = "delayed"\n'
        "\n"
        "  rate_limits {\n"
        "    max_dispatches_per_second = 500\n"
        "    max_concurrent_dispatches = 1000\n"
        "  }\n"
        "\n"
        "  retry_config {\n"
        "    max_attempts  = 5\n"
        '    min_backoff   = "10s"\n'
        '    max_backoff   = "600s"\n'
        "    max_doublings = 16\n"
        "  }\n"
        "}\n"
    ) in hcl
    assert 'resource "google_cloud_tasks_queue_iam_member" "homing_tasks_enqueuer"' in hcl
    assert "  name     = google_cloud_tasks_queue.homing.name\n" in hcl
    assert 'resource "google_service_account_iam_member" "homing_tasks_account_user"' in hcl
    assert f'"projects/-/serviceAccounts/{TASKER}"' in hcl
    assert 'resource "google_cloud_run_service_iam_member" "homing_tasks_invoker"' in hcl
    assert 'resource "google_cloud_run_service_iam_member" "homing_push_invoker"' in hcl


def test_the_tasks_terraform_is_formatted_as_terraform_fmt_would(
    terraform: str, tmp_path: Path
) -> None:
    (tmp_path / "homing.tf").write_text(render_terraform(plan(tasks_settings())))
    result = subprocess.run(
        [terraform, "fmt", "-check", "-diff", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TF_CLI_CONFIG_FILE": "/dev/null"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_apply_iam_grants_the_enqueuer_on_the_queue_once_and_reports_the_account_user() -> None:
    the_plan = plan(tasks_settings(dead_letter_topic=None))
    pubsub, cloud_run, tasks = FakeIamClient(), FakeIamClient(), FakeIamClient()
    existing = policy_pb2.Policy(etag=b"3")
    existing.bindings.add(role="roles/cloudtasks.enqueuer", members=["user:a@example.com"])
    tasks.policies[QUEUE] = existing
    member = f"serviceAccount:{SERVICE_ACCOUNT}"

    def applied() -> list[str]:
        outcomes = apply_iam(the_plan, pubsub, pubsub, "42", cloud_run=cloud_run, tasks=tasks)
        return [str(o) for o in outcomes]

    first = applied()

    assert f"iam roles/cloudtasks.enqueuer on queue {QUEUE}: granted to {member}" in first
    assert (
        f"iam roles/iam.serviceAccountUser on service account {TASKER}: not applied by homing "
        f"(needs the IAM API); run: gcloud iam service-accounts add-iam-policy-binding {TASKER} "
        f"--member={member} --role=roles/iam.serviceAccountUser"
    ) in first
    assert (
        f"iam roles/run.invoker on run service {SERVICE}: granted to serviceAccount:{TASKER}"
    ) in first
    assert [(b.role, list(b.members)) for b in tasks.policies[QUEUE].bindings] == [
        ("roles/cloudtasks.enqueuer", ["user:a@example.com", member])
    ]
    assert f"iam roles/cloudtasks.enqueuer on queue {QUEUE}: unchanged" in applied()
    assert tasks.writes == 1


def test_the_plan_command_prints_the_queue_from_flags(capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--project", "homing-test", "--topic", "events", "--subscription", "events-push"]
    flags += ["--push-endpoint", "https://api.example.com/events", "--tasks-queue", "delayed"]
    flags += ["--tasks-location", "us-central1", "--tasks-enqueuer", SERVICE_ACCOUNT]
    assert main(["plan", *flags, "--tasks-max-doublings", "2"]) == 0
    out = capsys.readouterr().out
    assert "gcloud tasks queues create delayed" in out
    assert "--location=us-central1" in out
    assert "--max-doublings=2" in out
