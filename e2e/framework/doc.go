// Package framework starts the real servers Keywarden is tested against —
// etcd + kube-apiserver, Vault (dev mode) and PostgreSQL — on loopback with
// random free ports and temporary directories, plus the Keywarden daemon under
// test and a kubelet-shaped driver that calls the daemon's CSI Node service the
// way kubelet does.
//
// Every Start function takes a testing.TB, registers its own teardown with
// t.Cleanup and, when the test failed, dumps the server's log into the test
// output. Servers come from the tools cache ($KEYWARDEN_TOOLS_DIR, default
// <repo>/.bin) that `make tools` fills; a missing binary fails the test with a
// hint to run `make tools` instead of skipping it, so a green run always means
// the real servers ran.
//
// Waits are bounded (60 s for the apiserver, 10 s for Vault, 30 s for
// PostgreSQL) and a server that exits early fails at once with its log.
//
// The harness is only meant for tests built with the e2e tag; see
// e2e/README.md.
package framework
