# artifactapi build, run and test entry points.

CARGO       ?= cargo
WASM_TARGET := wasm32-wasip2
PLUGINS     := alpine rpm pypi npm helm docker goproxy puppet terraform template
WASM_OUT    := target/$(WASM_TARGET)/plugin
PLUGIN_DIR  := target/plugins
FIXTURE_DIR := target/test-plugins

export ARTIFACTAPI_TEST_PLUGINS  := $(CURDIR)/$(PLUGIN_DIR)
export ARTIFACTAPI_TEST_FIXTURES := $(CURDIR)/$(FIXTURE_DIR)
export ARTIFACTAPI_E2E_TOOLS     := $(CURDIR)/target/e2e-tools

.PHONY: build run test test-shared lint fixtures e2e-tools wasm-target bench clean

## build: the server (target/release/artifactapi) and every plugin (target/plugins/*.wasm)
build: wasm-target
	$(CARGO) build --release -p artifactapi
	$(CARGO) build --profile plugin --target $(WASM_TARGET) $(foreach p,$(PLUGINS),-p plugin-$(p))
	@mkdir -p $(PLUGIN_DIR)
	@for p in $(PLUGINS); do \
		cp $(WASM_OUT)/plugin_$$p.wasm $(PLUGIN_DIR)/.$$p.wasm.tmp && \
		mv $(PLUGIN_DIR)/.$$p.wasm.tmp $(PLUGIN_DIR)/$$p.wasm; \
	done

## run: serve remotes.yaml on the embedded defaults (local disk + SQLite under ./data)
run: build
	./target/release/artifactapi serve

## test: lint, then every unit and end-to-end test, then part of the
## end-to-end suite again on PostgreSQL + Redis + S3 (test-shared)
test: build fixtures e2e-tools lint
	$(CARGO) test --release --workspace
	$(MAKE) test-shared

## test-shared: generic fills and hits, pip/uv, npm/pnpm and skopeo push/pull
## with each test server on its own PostgreSQL, Redis and S3 (s3s-fs)
test-shared:
	ARTIFACTAPI_TEST_BACKENDS=shared $(CARGO) test --release --workspace --test generic
	ARTIFACTAPI_TEST_BACKENDS=shared $(CARGO) test --release --workspace \
		--test pypi --test npm --test oci_clients -- \
		pip_and_uv_install npm_and_pnpm_install skopeo_pushes_both_formats

## e2e-tools: the real clients and upstream servers the end-to-end tests drive
## (each tests/setup/*.sh installs its own, idempotently, under target/e2e-tools)
e2e-tools:
	@mkdir -p $(ARTIFACTAPI_E2E_TOOLS)
	@for script in tests/setup/*.sh; do \
		[ -e "$$script" ] || continue; \
		bash "$$script" || exit 1; \
	done

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

## fixtures: test plugins, the misbehaving one in two versions for the hot-reload test
fixtures: wasm-target
	@mkdir -p $(FIXTURE_DIR)
	@for v in 1.0.0 2.0.0; do \
		FIXTURE_VERSION=$$v $(CARGO) build --profile plugin --target $(WASM_TARGET) -p plugin-fixture-misbehave && \
		cp $(WASM_OUT)/plugin_fixture_misbehave.wasm $(FIXTURE_DIR)/misbehave-$$v.wasm || exit 1; \
	done

wasm-target:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

## bench: plugin call overhead and cache-hit throughput next to nginx
bench: build
	./bench/run.sh

clean:
	$(CARGO) clean
