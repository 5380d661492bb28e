// Package vaultref is the canonical string form of a Vault secret reference: the Path of a
// source.Ref{Source: "vault"}. It encodes everything that makes two fetches different (engine,
// mount, path or role, pinned version, chosen keys and the share owner of a dynamic
// credential) and nothing else, so that the rotation engine's one-fetch-per-Ref gives one Vault
// call per secret per node with exactly the sharing the grant asked for.
//
// The string is an URL query with the fields in a fixed order and nothing optional written
// when empty. Parse accepts only the canonical form (it re-encodes and compares), so two
// different strings never name the same secret.
//
// This package has no dependency on the Vault client: the broker builds references with it.
package vaultref
