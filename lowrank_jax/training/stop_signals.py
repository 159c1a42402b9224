"""SIGINT (Ctrl-C) and SIGTERM (what clusters and TPU pods send before preempting a job) during training: noted, so
that the loop saves a checkpoint at the next step boundary and exits; a second signal stops at once."""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """While entered, `received` is the number of the first SIGINT / SIGTERM that arrived (0: none); the handlers
    that were installed before come back on exit. Outside the main thread (where Python cannot set handlers) it
    notes nothing and the signals keep their usual effect."""

    def __enter__(self) -> StopSignals:
        self.received = 0
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._note) for number in SIGNALS}
        return self

    def _note(self, number, frame) -> None:
        if self.received:  # asked twice: the usual effect (KeyboardInterrupt, or the process ends)
            self.__exit__()
            signal.raise_signal(number)
            return
        self.received = number
        print(f"\n{signal.Signals(number).name}: saving a checkpoint after this step, then stopping (send it again "
              "to stop at once, without saving)", flush=True)

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self._previous = {}
