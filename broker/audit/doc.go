// Package audit records every authentication, access decision and delivery the broker makes.
//
// Events carry who asked (namespace, service account, pod, SPIFFE ID), what for (secret name,
// delivery), the outcome and the grant that decided it — never tokens or secret values. The
// Recorder interface is what the broker calls; SlogRecorder writes events as structured log
// records.
package audit
