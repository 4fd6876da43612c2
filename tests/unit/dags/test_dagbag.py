"""DAG integrity over the whole DagBag: imports cleanly, and every DAG is documented, owned, tagged and retried."""

import pytest

from edge.orchestration import dags_folder


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    import os

    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow")))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(str(dags_folder()))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "shop_daily" in dagbag.dag_ids


def test_every_dag_has_owner_tags_retries_and_docs(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, dag_id
        assert dag.doc_md and len(dag.doc_md) > 50, dag_id
        for task in dag.tasks:
            assert task.owner not in (None, "", "airflow"), f"{dag_id}.{task.task_id}"
            assert task.retries >= 1, f"{dag_id}.{task.task_id}"


def test_skeleton_wiring(dagbag):
    dag = dagbag.dags["shop_daily"]
    assert {t.task_id for t in dag.tasks} == {
        "ingest",
        "features",
        "materialize",
        "train",
        "deploy",
        "check_drift",
        "alert",
    }
    assert "materialize" in dag.get_task("train").upstream_task_ids
    assert dag.get_task("alert").upstream_task_ids == {"check_drift"}


def test_train_federated_wiring(dagbag):
    dag = dagbag.dags["train_federated"]
    assert {t.task_id for t in dag.tasks} == {"list_owners", "build_shard", "train", "evaluate", "register"}
    assert dag.get_task("build_shard").upstream_task_ids == {"list_owners"}
    assert dag.get_task("train").upstream_task_ids == {"build_shard"}
    assert dag.get_task("evaluate").upstream_task_ids == {"build_shard", "train"}
    assert dag.get_task("register").upstream_task_ids == {"train", "evaluate"}
    assert not dag.catchup and dag.max_active_runs == 1
    assert set(dag.params) == {"rounds", "dp_epsilon", "dp_delta", "clipping_norm"}
