"""FocalServe benchmarks: serving throughput/latency and FAISS search (`make bench`)."""
