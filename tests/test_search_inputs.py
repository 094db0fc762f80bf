"""Budget, target, storage, data set and tracking strings: strict parsing, one-line errors."""
from pathlib import Path

import optuna
import pytest
import torch

from search.core.budget import parse_budget
from search.study.storage import check_storage_url, open_storage
from search.core.target import Target, parse_target
from search.study.storage import check_tracking_uri


@pytest.mark.parametrize("text,seconds,kind", [
    ("64gpu-h", 64 * 3600, "gpu"), ("2cpu-h", 7200, "cpu"), ("90gpu-min", 5400, "gpu"),
    ("0.05cpu-h", 180, "cpu"), ("600cpu-s", 600, "cpu"), (".5gpu-h", 1800, "gpu"),
])
def test_budget_parses(text, seconds, kind):
    budget = parse_budget(text)
    assert budget.seconds == pytest.approx(seconds) and budget.kind == kind


@pytest.mark.parametrize("text", ["64", "64gpu", "gpu-h", "64 gpu-h", "64gpu-hours", "-1cpu-h", "0cpu-h",
                                  "1tpu-h", "1e3gpu-h", "64GPU-H", ""])
def test_bad_budget_is_a_one_line_error(text):
    with pytest.raises(ValueError) as error:
        parse_budget(text)
    message = str(error.value)
    assert repr(text) in message
    assert "expected" in message or "more than zero" in message
    assert "\n" not in message


def test_budgets_add_up_in_one_kind():
    total = parse_budget("1cpu-h").plus(parse_budget("30cpu-min"))
    assert total.seconds == 5400 and parse_budget(total.text).seconds == 5400
    with pytest.raises(ValueError, match="gpu"):
        parse_budget("1cpu-h").plus(parse_budget("1gpu-h"))


@pytest.mark.parametrize("text,key", [
    ("cpu:bs1:224", "cpu:bs1:224:fp32:t1"), ("cuda:bs64:224:fp16", "cuda:bs64:224:fp16"),
    ("cuda:bs64:384:bf16", "cuda:bs64:384:bf16"), ("cpu:bs8:224:bf16", "cpu:bs8:224:bf16:t1"),
    ("cpu:bs8:224:t4", "cpu:bs8:224:fp32:t4"), ("cpu:bs1:224:fp32:t1", "cpu:bs1:224:fp32:t1"),
    # A runtime last; eager is the default and names none, so keys made before runtimes still hold.
    ("cpu:bs1:224:eager", "cpu:bs1:224:fp32:t1"), ("cpu:bs1:224:ort", "cpu:bs1:224:fp32:t1:ort"),
    ("cpu:bs4:224:t2:compile", "cpu:bs4:224:fp32:t2:compile"), ("cuda:bs64:224:fp16:trt", "cuda:bs64:224:fp16:trt"),
    ("cuda:bs64:224:compile", "cuda:bs64:224:fp32:compile"), ("cuda:bs8:224:ort", "cuda:bs8:224:fp32:ort"),
])
def test_target_parses_to_a_canonical_key(text, key):
    assert parse_target(text).key == key


def test_targets_built_in_code_share_the_parsed_key():
    assert Target("cpu", 1, 224) == parse_target("cpu:bs1:224") and Target("cpu", 1, 224).threads == 1
    assert Target("cpu", 1, 224, runtime="ort") == parse_target("cpu:bs1:224:ort")
    assert Target("cuda", 64, 224, "fp16", threads=8).key == "cuda:bs64:224:fp16"


@pytest.mark.parametrize("text", ["cpu", "gpu:bs1:224", "cuda:64:224", "cuda:bs0:224", "cuda:bs64:224:int8",
                                  "cpu:bs1:224:fp16", "cuda:bs64", "cpu:bs1:224:fp32:x",
                                  "cpu:bs1:224:t0", "cuda:bs64:224:fp16:t4", "cpu:bs1:224:t4:fp32",
                                  "cpu:bs1:224:onnx", "cpu:bs1:224:ort:t1", "cpu:bs1:224:trt", "cpu:bs1:224:bf16:ort",
                                  "cuda:bs8:224:fp16:ort", "cuda:bs8:224:bf16:trt", "cpu:bs1:224:ORT", "cpu:bs1:7",
                                  "cpu:bs1:28"])
def test_bad_target_is_a_one_line_error(text):
    with pytest.raises(ValueError) as error:
        parse_target(text)
    assert repr(text) in str(error.value) and "\n" not in str(error.value)


def test_the_smallest_target_resolution_is_the_one_every_lit_network_runs_at():
    from litv2 import LITV2_S, build_model
    from litv2.reference import REFERENCE_CONFIG
    from litv2.target import MIN_RESOLUTION

    with pytest.raises(ValueError, match="resolution 28 is below 32, the smallest input a LIT network runs at"):
        parse_target("cpu:bs1:28")
    assert parse_target(f"cpu:bs1:{MIN_RESOLUTION}").img_size == MIN_RESOLUTION
    for config in (LITV2_S, REFERENCE_CONFIG):
        for side, runs in ((MIN_RESOLUTION, True), (MIN_RESOLUTION - 4, False)):
            try:
                with torch.no_grad():
                    build_model(config, num_classes=10, img_size=side).eval()(torch.randn(1, 3, side, side))
            except RuntimeError:
                assert not runs
            else:
                assert runs


@pytest.mark.parametrize("url", ["sqlite:///{tmp}/optuna.db", "journal:{tmp}/journal.log"])
def test_good_storage_urls_open_a_working_storage(url, tmp_path):
    storage = open_storage(url.format(tmp=tmp_path))
    optuna.create_study(study_name="probe", storage=storage).enqueue_trial({"x": 1})
    reopened = open_storage(url.format(tmp=tmp_path))
    assert optuna.get_all_study_names(reopened) == ["probe"]
    assert optuna.load_study(study_name="probe", storage=reopened).trials[0].state == optuna.trial.TrialState.WAITING


def test_server_storage_urls_are_accepted_but_other_schemes_are_not():
    check_storage_url("postgresql://user@db.example/optuna")  # a server URL parses without contacting it
    with pytest.raises(ValueError, match="postgresq://"):
        check_storage_url("postgresq://user@db.example/optuna")


@pytest.mark.parametrize("url", ["optuna.db", "sqlite://optuna.db", "sqlite:///{tmp}/missing/optuna.db",
                                 "redis://localhost", "journal:{tmp}/missing/journal.log", ""])
def test_bad_storage_urls(url, tmp_path):
    text = url.format(tmp=tmp_path)
    with pytest.raises(ValueError) as error:
        check_storage_url(text)
    assert repr(text) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("uri", ["mlflow.db", "file:///tmp/mlruns", "sqlite:////nonexistent/dir/mlflow.db"])
def test_bad_tracking_uris(uri):
    with pytest.raises(ValueError, match="tracking URI"):
        check_tracking_uri(uri)


# ---------------------------------------------------------------------- endpoints and folders (search.study.preflight)
def test_a_database_url_without_its_driver_names_the_extra_to_install(monkeypatch):
    import importlib.util

    from search.study import preflight

    real = importlib.util.find_spec
    missing = ("psycopg", "psycopg2", "pymysql")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name in missing else real(name))
    # SQLAlchemy 2.1 loads psycopg 3 for a bare postgresql:// URL: that is the driver checked for
    with pytest.raises(ValueError, match=r"needs the psycopg driver: pip install 'litv2-search\[postgres\]'"):
        preflight.check_storage_endpoint("postgresql://user:secret@127.0.0.1:1/optuna")
    with pytest.raises(ValueError, match=r"needs the psycopg2 driver: pip install psycopg2-binary"):
        preflight.check_storage_endpoint("postgresql+psycopg2://user:secret@127.0.0.1:1/optuna")
    with pytest.raises(ValueError, match=r"litv2-search\[mysql\]") as error:
        preflight.check_storage_endpoint("mysql://user:secret@127.0.0.1:1/optuna")
    assert "secret" not in str(error.value)  # passwords never reach the terminal


@pytest.mark.parametrize("check,value,expected", [
    ("storage", "postgresql://user@127.0.0.1:1/optuna", "cannot connect to 127.0.0.1:1"),
    ("storage", "mysql://user@127.0.0.1:1/optuna", "cannot connect to 127.0.0.1:1"),
    ("tracking", "http://127.0.0.1:1", "does not answer within 3 s"),
    ("ray", "127.0.0.1:1", "cannot connect to 127.0.0.1:1"),
    ("ray", "ray://127.0.0.1:1", "cannot connect to 127.0.0.1:1"),
    ("ray", "localhost", "expected auto or HOST:PORT"),
    ("ray", "10.0.0.1:99999", "expected auto or HOST:PORT"),
])
def test_unreachable_endpoints_are_refused_in_seconds(check, value, expected):
    import time

    from search.study import preflight

    function = {"storage": preflight.check_storage_endpoint, "tracking": preflight.check_tracking_endpoint,
                "ray": preflight.check_ray_address}[check]
    start = time.perf_counter()
    with pytest.raises(ValueError, match=expected) as error:
        function(value)
    assert time.perf_counter() - start < preflight.CONNECT_TIMEOUT_S + 1
    assert value.split("://")[-1].split("@")[-1].split("/")[0] in str(error.value) and "\n" not in str(error.value)


def test_a_tracking_server_that_answers_passes(tmp_path):
    """Any HTTP answer counts (an MLflow server's /health, or a proxy's 404): it is there."""
    import http.server
    import threading

    from search.study.preflight import check_tracking_endpoint

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check_tracking_endpoint(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()


def test_unwritable_folders_are_refused(tmp_path):
    from search.study.preflight import check_storage_endpoint, check_tracking_endpoint, check_writable_folder

    with pytest.raises(ValueError, match="not writable"):
        check_writable_folder(Path("/proc"), "--workdir")
    with pytest.raises(ValueError, match="'journal:/proc/journal.log'.*not writable"):
        check_storage_endpoint("journal:/proc/journal.log")
    with pytest.raises(ValueError, match="does not exist"):
        check_tracking_endpoint(f"sqlite:///{tmp_path}/missing/mlflow.db")
    check_storage_endpoint(f"sqlite:///{tmp_path}/optuna.db")
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing


def test_reading_a_study_from_a_missing_storage_creates_nothing(tmp_path):
    from search.study.studies import open_study

    for url in (f"sqlite:///{tmp_path}/optuna.db", f"journal:{tmp_path}/journal.log"):
        with pytest.raises(ValueError, match="does not exist"):
            open_study(url, "absent")
    assert list(tmp_path.iterdir()) == []


def test_option_values_that_start_with_a_dash_reach_their_checks(capsys):
    from litv2.argparsing import StrictParser

    parser = StrictParser(prog="p")
    parser.add_argument("--budget")
    parser.add_argument("--flag", action="store_true")
    parser.add_argument("--seed", type=int)
    assert parser.parse_args(["--budget", "-1gpu-h", "--seed", "-1"]).budget == "-1gpu-h"
    assert parser.parse_args(["--budget", "-1gpu-h", "--seed", "-1"]).seed == -1
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--budget", "--flag"])  # an option is never taken as a value
    assert exited.value.code == 2  # bad input
    assert capsys.readouterr() == ("", "p: error: argument --budget: expected one argument (see --help)\n")
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--bud", "1cpu-h"])  # no prefix matching
    assert exited.value.code == 2
    assert capsys.readouterr() == ("", "p: error: unrecognized arguments: --bud 1cpu-h (see --help)\n")


def test_library_info_lines_go_to_the_work_directory_log(tmp_path, capsys):
    import logging
    import sys

    from search.cli.logs import route_library_logs

    # Stand-ins for the libraries' own terminal handlers, writing to this test's stderr (the
    # real ones keep whatever stream was current when an earlier test imported the library),
    # and loggers open to INFO (other test modules lower Optuna's verbosity at import).
    loggers = [logging.getLogger(name) for name in ("ray", "mlflow", "optuna")]
    terminal = logging.StreamHandler(sys.stderr)
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
        logger.addHandler(terminal)
    try:
        first = route_library_logs(tmp_path)
        logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
        logging.getLogger("ray").warning("a warning still reaches the terminal")
        auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
        auth.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
        auth.warning("Token authentication is disabled for this Ray cluster. Anyone with network access ...")
        (tmp_path / "other").mkdir()
        second = route_library_logs(tmp_path / "other")  # a second search in this process: its own file only
        logging.getLogger("optuna").info("A new study created")
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(terminal)
            logger.setLevel(level)
    assert "Creating initial MLflow database tables" in first.read_text()
    assert "A new study created" in second.read_text() and "A new study created" not in first.read_text()
    err = capsys.readouterr().err
    assert "Creating initial" not in err and "A new study" not in err
    assert "a warning still reaches the terminal" in err
    assert "authentication is enabled" not in err and "authentication is enabled" in first.read_text()
    assert "authentication is disabled" in err  # what the user should act on


def test_generated_study_names_are_valid_whatever_the_space_file_is_called():
    from search.study.settings import check_study_name, default_study_name

    for stem in ("my space", "..", "tiny", "ünïcode/space"):
        assert check_study_name(default_study_name(stem))
    assert default_study_name("my space").startswith("my-space-")
