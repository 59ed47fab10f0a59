"""Every DAG file imports cleanly, with no connection or network, and follows the project's policies."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_dag_files_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "medins_batch" in dagbag.dags


def dag_ids():
    from airflow.dag_processing.dagbag import DagBag

    return sorted(DagBag(dag_folder=str(ROOT / "dags")).dag_ids)


@pytest.mark.parametrize("dag_id", dag_ids())
class TestPolicy:
    def test_has_tags_docs_and_an_explicit_schedule(self, dagbag, dag_id):
        dag = dagbag.dags[dag_id]

        assert dag.tags, "tag every DAG"
        assert dag.doc_md and dag.doc_md.strip().startswith("###")
        assert dag.catchup is False

    def test_start_date_is_timezone_aware(self, dagbag, dag_id):
        dag = dagbag.dags[dag_id]

        assert dag.start_date is not None and dag.start_date.tzinfo is not None

    def test_tasks_retry_with_backoff_and_time_out(self, dagbag, dag_id):
        for task in dagbag.dags[dag_id].tasks:
            if task.task_id == "summarize":
                continue  # it only reads the table; a retry would not change its verdict
            assert task.retries >= 1, task.task_id
            assert task.retry_exponential_backoff, task.task_id
            assert task.execution_timeout is not None and task.execution_timeout <= timedelta(minutes=10)

    def test_tasks_run_on_named_queues(self, dagbag, dag_id):
        queues = {"default", "medical_interface", "medical_batch", "maintenance"}

        assert {task.queue for task in dagbag.dags[dag_id].tasks} <= queues


class TestBatchDag:
    def test_chunks_go_to_the_batch_queue_and_the_rest_to_default(self, dagbag):
        dag = dagbag.dags["medins_batch"]

        assert dag.get_task("send_chunk").queue == "medical_batch"
        assert dag.get_task("register").queue == "default"
        assert dag.get_task("summarize").trigger_rule == "all_done"

    def test_chunks_have_a_soft_limit_of_5_minutes_a_hard_one_of_10_and_3_retries(self, dagbag):
        send = dagbag.dags["medins_batch"].get_task("send_chunk")

        import inspect

        from medins.operators.chunk import MedicalInsuranceChunkOperator

        signature = inspect.signature(MedicalInsuranceChunkOperator.__init__)
        default = signature.parameters["soft_time_limit"].default
        assert send.partial_kwargs.get("soft_time_limit", default) == timedelta(minutes=5)
        assert send.partial_kwargs["execution_timeout"] == timedelta(minutes=10)
        assert send.partial_kwargs["retries"] == 3
        assert send.partial_kwargs["retry_exponential_backoff"]

    def test_single_calls_go_to_the_interface_queue(self, dagbag):
        assert dagbag.dags["medins_call"].get_task("call_interface").queue == "medical_interface"

    def test_chunks_are_mapped_with_readable_labels(self, dagbag):
        send = dagbag.dags["medins_batch"].get_task("send_chunk")

        assert send.map_index_template == "{{ task.chunk['label'] }}"

    @pytest.mark.parametrize(
        ("conf", "reason"),
        [
            ({"requests": "1101"}, "is not of type 'array'"),
            ({"requests": []}, "should be non-empty"),
            ({"requests": [1, 2]}, "is not of type 'object'"),
            ({"requests": [{"api_code": 1101}]}, "is not of type 'string'"),
            ({"requests": [{"api_code": "1101", "data": {}}], "chunk_size": 0}, "less than the minimum"),
            ({"requests": [{"api_code": "1101", "data": {}}], "batch_id": "a b"}, "does not match"),
            ({"requests": [{"api_code": "1101", "request_id": "x'; DROP TABLE t; --"}]}, "does not match"),
        ],
        ids=[
            "not-a-list",
            "empty",
            "not-objects",
            "api-code-number",
            "chunk-size-zero",
            "batch-id-space",
            "request-id-sql",
        ],
    )
    def test_bad_conf_is_refused_with_the_reason(self, dagbag, conf, reason):
        from airflow.sdk.exceptions import ParamValidationError

        params = dagbag.dags["medins_batch"].params
        bad = [key for key in conf if not params.get_param(key).resolve(conf[key], suppress_exception=True)]

        with pytest.raises(ParamValidationError, match=reason):
            params.get_param(bad[0]).resolve(conf[bad[0]])

    def test_good_conf_is_accepted(self, dagbag):
        params = dagbag.dags["medins_batch"].params
        requests = [{"api_code": "1101", "org_code": "H44010600001", "data": {"mdtrt_cert_type": "02"}}]

        assert params.get_param("requests").resolve(requests) == requests
        assert params.get_param("chunk_size").resolve(100) == 100

    def test_more_requests_than_the_maximum_are_refused(self, dagbag):
        from medins.batch import MAX_REQUESTS

        schema = dagbag.dags["medins_batch"].params.get_param("requests").schema

        assert schema["maxItems"] == MAX_REQUESTS
