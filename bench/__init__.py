"""`make bench`: Versioner's throughput and latency as ratios to a null gRPC service.

The null service (bench.null_service) is the same grpc.aio stack (server options,
ObservingInterceptor with GrpcMetrics, health, reflection, JSON call logs) with
handlers that return prebuilt responses: the physical limit of Python gRPC on
this machine. Load comes from separate processes (bench.load, bench.watchers).
See BENCHMARKS.md for what is measured and the figures.
"""
