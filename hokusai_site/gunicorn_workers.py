"""gunicorn's threaded worker, stopping when its requests are done (deploy/gunicorn.conf.py).

gunicorn 26's gthread worker, stopped, waits for socket events for as long as its graceful
timeout has left before it looks at which kept-alive connections have expired. So one idle
kept-alive client (nginx's upstream pool, a client library's pool) holds the worker for the
whole graceful timeout, and the arbiter kills it at that same moment: its `worker_exit` hook,
which writes the prediction log's queued rows, never runs.
"""

from gunicorn.workers import gthread


class ThreadWorker(gthread.ThreadWorker):
    def wait_for_and_dispatch_events(self, timeout):
        if not self.alive:
            # Stopping: a request that has arrived is served (and its connection then closed, as
            # the worker does once stopped); a connection with no request in it has nothing to
            # wait for.
            super().wait_for_and_dispatch_events(0)
            self.close_idle_connections()
            if not self.nr_conns:
                return
        super().wait_for_and_dispatch_events(timeout)

    def close_idle_connections(self):
        for conn in (*self.keepalived_conns, *self.pending_conns):
            conn.timeout = 0
        self.murder_keepalived()
        self.murder_pending()
