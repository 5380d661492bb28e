// Package chaos is shared by the fault-campaign tests (kill -9 during publish and key
// rotation, failed store commits, Vault outages): how many trials to run and one summary line
// per campaign, so `make chaos` can print one table of what every campaign measured.
//
// It is imported by tests only. Reading the environment here is deliberate: the campaigns run
// under `go test`, where the environment is the only way to pass a trial count through.
package chaos
