// Package e2e holds Keywarden's end-to-end tests. They are built only with
// the e2e tag (`make e2e`, or go test -tags e2e ./e2e/...) and run against
// the real servers started by package e2e/framework.
package e2e
