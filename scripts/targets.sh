# The systems postern's client is built for (GOOS/GOARCH); the daemon is
# Linux's. Sourced by scripts/test.sh (cross-compiles and vets each) and
# scripts/release.sh (builds the archives).
TARGETS="linux/amd64 linux/arm64 linux/arm darwin/amd64 darwin/arm64 windows/amd64 windows/arm64 freebsd/amd64"
# Packages whose code (and tests) must build everywhere: the client's side.
PORTABLE="./client ./spa ./replay ./ratelimit ./port ./policy ./firewall/mode ./config ./knock ./fko ./covert ./command ./internal/atomicfile ./internal/conferr"
