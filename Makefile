# fnmesh: the targets people guess.
GO        ?= go
NPM       ?= npm
WITHREDIS  = $(GO) run ./internal/redistest/withredis --
PEERS     ?= ../shared/peers

.PHONY: demo deps test test-race test-soak lint bench bench-scale build js gateway fuzz

## demo: the example services and a caller, on the in-memory bus
##       (REDIS_URL=redis://... make demo runs it over Redis)
demo:
	$(GO) run ./cmd/fnmesh demo

## test: unit tests and integration tests against a real redis-server
##       (started on a free port, or $REDIS_URL), a Redis Cluster and a
##       Sentinel set (started on free ports), the TypeScript client's
##       tests, Go/Node interop and the gateway page in headless chromium;
##       then deployments/ (its own module): manifests checked against the
##       code, kustomize rendered
test: deps js test-python
	$(GO) test -count=1 -timeout 9m ./...
	cd deployments && $(GO) test -count=1 ./...

## test-python: the Python package's suite (client/python/tests) against a
##              real redis-server (started on a free port, or $REDIS_URL)
PYTHON ?= /usr/bin/python3
.PHONY: test-python
test-python: deps
	$(WITHREDIS) $(PYTHON) -m pytest -q client/python/tests

## test-race: the same under the race detector
test-race: deps js
	$(GO) test -race -count=1 -timeout 15m ./...
	cd deployments && $(GO) test -race -count=1 ./...

## test-soak: one million calls; RSS and goroutines of every process, and
##            Redis memory, keys, streams and pending entries stay flat
test-soak:
	$(GO) test -tags soak -count=1 -timeout 10m -run TestMillionCalls -v ./integration

## deps: check the tools the tests need (redis-server, node, npm, chromium,
##       python3 modules); install the missing ones with apt-get as root
##       on Debian, otherwise stop and say what to install
deps:
	@./scripts/deps

## js: the Node packages the tests use, from their lockfiles (npm ci):
##     the TypeScript client (client/js) and the page test's driver
##     (gateway/e2e, playwright-core; the browser is Debian's chromium)
js: deps client/js/node_modules/.package-lock.json gateway/e2e/node_modules/.package-lock.json

%/node_modules/.package-lock.json: %/package-lock.json %/package.json
	cd $* && $(NPM) ci --no-audit --no-fund
	@touch $@

## gateway: the HTTP gateway with the function browser and the example
##          catalog from the live registry, on Redis (REDIS_URL or localhost); verifies tokens
##          with $FNMESH_JWT_SECRET (GATEWAY_FLAGS=--demo: the demo's)
gateway:
	$(GO) run ./cmd/fnmesh gateway --ui $(GATEWAY_FLAGS)

## lint: gofmt and go vet
lint:
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd deployments && $(GO) vet ./...

## bench: fnmesh against the bare Redis loops of $(PEERS) in one run, on
##        loopback and through a proxy adding 0.5 ms and 2 ms round trip,
##        alternating for ROUNDS rounds (medians); then the Go benchmarks
##        (allocations per call)
ROUNDS ?= 3
bench:
	$(WITHREDIS) $(GO) run ./internal/bench/benchset --peers '$(PEERS)' --rounds $(ROUNDS)
	$(WITHREDIS) $(GO) test -run '^$$' -bench . -benchmem ./client ./integration

## bench-scale: calls/s and p99 with 1, 2 and 4 replica processes of an
##              I/O-bound and of a CPU-bound function (256 in flight)
bench-scale:
	$(WITHREDIS) sh -c '$(GO) run ./cmd/fnmesh bench --mode scale --work io --rounds 3 && \
	  $(GO) run ./cmd/fnmesh bench --mode scale --work cpu'

## bench-wire: the call path on our own RESP and on rueidis, beside fnmesh
##             calls and peers rawpipe, on loopback and 0.25 ms and 1 ms away
.PHONY: bench-wire
bench-wire:
	$(WITHREDIS) $(GO) run ./internal/bench/wirecompare --peers '$(PEERS)'

## fuzz: each fuzz test for FUZZTIME (the seed corpora run in make test)
FUZZTIME ?= 10s
fuzz:
	$(GO) test ./security -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime $(FUZZTIME)
	$(GO) test ./security -run '^$$' -fuzz '^FuzzParseJWKS$$' -fuzztime $(FUZZTIME)
	$(GO) test ./security -run '^$$' -fuzz '^FuzzParsePolicy$$' -fuzztime $(FUZZTIME)
	$(GO) test ./internal/wire -run '^$$' -fuzz '^FuzzRESPReadersAgainstGoRedis$$' -fuzztime $(FUZZTIME)
	$(GO) test ./internal/wire -run '^$$' -fuzz '^FuzzReadRawReply$$' -fuzztime $(FUZZTIME)
	$(GO) test ./internal/wire -run '^$$' -fuzz '^FuzzReadReplyErr$$' -fuzztime $(FUZZTIME)
	$(GO) test ./internal/wire -run '^$$' -fuzz '^FuzzParseStreamReply$$' -fuzztime $(FUZZTIME)
	$(GO) test ./internal/wire -run '^$$' -fuzz '^FuzzParseAutoClaimReply$$' -fuzztime $(FUZZTIME)
	$(GO) test ./bus -run '^$$' -fuzz '^FuzzDecodeRequestEntry$$' -fuzztime $(FUZZTIME)

build:
	$(GO) build -o bin/ ./cmd/...
