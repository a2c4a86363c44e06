"""GetJobStatus against the predecessor's REST status endpoint, measured side by side in one run.

Three servers answer the same question ("what is job X doing?") for the same job, one after the
other, each pinned alone to core 0 while h2load, Redis and this script share core 1:

* ``predecessor``: FastAPI + uvicorn, ``GET /api/jobs/{id}/status``, three sequential Redis GETs
  (``bench/predecessor_app.py``), over HTTP/1.1, 64 connections.
* ``cofounder``: the real ``cofounder-server``, ``AgentControlService/GetJobStatus`` over gRPC.
* ``noio``: a grpc.aio server answering GetJobStatus with a constant (``bench/noio_server.py``):
  the ceiling of the stack, so the table shows how close the real server gets to it.

Every measurement: start the server on core 0, check one real answer (a Python gRPC stub call or
an HTTP GET, compared field by field), warm up, run h2load with ``--log-file`` for per-request
latencies (p50/p99 computed here: h2load prints no percentiles), read the CPU time of the server,
of h2load and of Redis, check the answer again, stop the server. The order of the three servers
rotates from run to run so that drift on the machine does not favour one of them. On a shared
machine it waits for quiet cores first and repeats a measurement that other work disturbed
(``--quiet-wait``, ``--retries``), keeping the least disturbed attempt.

Run from the repository root::

    .venv/bin/python -m bench.getjobstatus                 # 3 runs x 20 s per server
    .venv/bin/python -m bench.getjobstatus --duration 10 --runs 1

Everything it starts is stopped on exit, Ctrl-C included. Traffic goes to 127.0.0.1 only.

Modules, one job each: ``targets`` (the three servers: how each starts and is checked),
``shared_redis`` (the Redis they read, and the job's live keys in it), ``processes`` (the
children this benchmark starts), ``h2load`` (driving the load generator, reading its output),
``measurement`` (one measurement, repeated when disturbed, and the runs), ``report`` (the table,
ratios and machine notes), ``__main__`` (flags, and the run from start to the JSON result).
"""
