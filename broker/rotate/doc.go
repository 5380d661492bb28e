// Package rotate is the node's secret cache and refresh scheduler. It holds at most one value
// per source.Ref, fetches it once no matter how many pods ask at the same time, re-fetches it
// when the source reports a change or when its renew time passes, and tells subscribers (watch
// streams, CSI volumes) that the value changed.
//
// A fetch is shared by every caller waiting for it and is cancelled only when the last of them
// gives up, so one impatient client cannot fail the others, and an abandoned fetch does not keep
// running against the backend.
package rotate
