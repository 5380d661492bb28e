// Command image builds the Keywarden container image from an already built, static
// linux keywarden binary, without a Docker daemon: `make image` runs it.
//
// It is a build tool, not part of the daemon; it lives in the main module so that vet,
// staticcheck and the unit tests cover it. The image is FROM scratch and holds one layer:
// the binary, /etc/passwd and /etc/group with a nonroot user (65532), the empty directories
// the daemon writes to, and an SPDX 2.3 SBOM made from the binary's own build info.
//
// The output is reproducible: every timestamp (image created, layer mtimes, SBOM created)
// comes from SOURCE_DATE_EPOCH, entries are sorted with fixed owners and modes, and the
// layer is gzipped by the standard library with a zeroed header, so two builds of the same
// commit with the same toolchain give the same manifest digest.
//
// go-containerregistry assembles the manifest and config and writes the OCI image layout
// and the docker-loadable tarball; the layer and SBOM bytes are made here.
package main
