.PHONY: bootstrap run test lint bench bench-quick proto

bootstrap:
	scripts/bootstrap.sh

run: bootstrap
	.venv/bin/wrenn up

test: bootstrap
	scripts/test.sh

lint:
	.venv/bin/ruff check wrenn_server tests bench
	.venv/bin/mypy

bench: bootstrap
	.venv/bin/python -m bench.run

bench-quick: bootstrap
	.venv/bin/python -m bench.run --quick

proto:
	.venv/bin/python -m grpc_tools.protoc --version >/dev/null
	PATH=.venv/bin:$$PATH scripts/gen-proto.sh
