"""How commands answer signals: SIGTERM as Ctrl-C inside a search's loop, a second signal
during the stop ends the process at once and quietly, and Ctrl-C in any command is one line
and exit 130 (the search's own, with Ray, is in test_search_e2e)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from search.engine.signals import Terminated, exit_code, stop_reason, stopped_by_signals

STOP_SLOWLY = textwrap.dedent("""
    import sys, time
    from search.engine.signals import exit_code, stopped_by_signals
    with stopped_by_signals():
        try:
            print("ready", flush=True)
            time.sleep(60)
        except KeyboardInterrupt as stop:
            print("stopping", flush=True)
            time.sleep(60)  # a stop that takes long: a second signal must end it
            sys.exit(exit_code(stop))
""")


def test_sigterm_raises_terminated_inside_the_block_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(Terminated) as caught:
        with stopped_by_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert exit_code(caught.value) == 143 and stop_reason(caught.value) == "terminated (SIGTERM)"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    with pytest.raises(KeyboardInterrupt) as caught:
        with stopped_by_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert exit_code(caught.value) == 130 and stop_reason(caught.value) == "interrupted"


@pytest.mark.parametrize("first,second,code", [(signal.SIGINT, signal.SIGINT, 130),
                                               (signal.SIGTERM, signal.SIGINT, 130),
                                               (signal.SIGINT, signal.SIGTERM, 143)])
def test_a_second_signal_during_the_stop_ends_the_process_quietly(first, second, code):
    process = subprocess.Popen([sys.executable, "-c", STOP_SLOWLY], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(first)
    assert process.stdout.readline().strip() == "stopping"
    started = time.monotonic()
    process.send_signal(second)
    out, err = process.communicate(timeout=30)
    assert process.returncode == code and time.monotonic() - started < 10
    assert err == "" and out == ""  # no traceback, nothing more


def test_ctrl_c_in_a_command_is_one_line_and_exit_130(tmp_path):
    # `space show` of a space whose drawing is slow enough to interrupt: a big -n. The signal
    # goes once the command prints its size line, i.e. while it draws: a Ctrl-C inside the
    # interpreter's imports (seconds on a loaded machine) can leave an import lock held.
    process = subprocess.Popen([sys.executable, "-m", "space", "show", "default", "-n", "100000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    while not process.stdout.readline().startswith("size:"):
        assert process.poll() is None, process.stderr.read()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err == "space: interrupted\n"


def test_the_signal_is_known_when_ray_turns_the_exception_into_a_keyboard_interrupt():
    # A signal that arrives inside ray.wait reaches Python through Ray's C++ loop, which raises a
    # plain KeyboardInterrupt whatever the handler raised.
    with pytest.raises(KeyboardInterrupt) as caught:
        with stopped_by_signals():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except Terminated:
                raise KeyboardInterrupt() from None
    assert not isinstance(caught.value, Terminated)
    assert exit_code(caught.value) == 143 and stop_reason(caught.value) == "terminated (SIGTERM)"
