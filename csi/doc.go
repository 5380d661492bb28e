// Package csi is Keywarden's CSI node driver: the Identity and Node services that kubelet
// calls for ephemeral inline volumes, the volume manager that fetches a pod's secrets through
// the broker and keeps them current, the atomic writer that swaps a volume's files in one
// rename (kubelet's AtomicWriter layout: timestamped data directory + "..data" symlink), the
// tmpfs mounter, and the recovery of published volumes after a daemon restart.
//
// Security decisions, each with a test:
//   - a publish is honoured only for the pod its token is bound to: the token is verified by
//     the broker (which enforces node binding), its pod UID must equal the request's, and the
//     target path must be exactly kubelet's volume directory for that pod (CVE-2020-8568);
//   - every file name from a request is validated and rejected, never cleaned (CVE-2020-8567),
//     and every file operation is relative to an open directory (os.Root), so a symlink planted
//     in the volume cannot redirect a write;
//   - a first publish never succeeds without all its files; a republish while a source is down
//     keeps the old files and returns OK (an error makes kubelet tear the mount down);
//   - the serviceAccount.tokens entry of the volume context never reaches a log or an error.
package csi
