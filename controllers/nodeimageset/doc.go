// Package nodeimageset is the node agent's reconciler: it makes the node's
// container runtime hold what its NodeImageSet's spec asks — each image at its
// digest, every tag pods use naming exactly that digest, pinned for its
// owners — and reports per image in the NodeImageSet's status, the one field
// the agent writes.
//
// The package is split by concept:
//
//   - nodeimageset_controller.go: Reconcile, what the spec wants against
//     what the agent knows, and the rate-limited status write;
//   - entry.go: a spec image with the settings its owners' lists give it,
//     and the choice between entries that claim one tag;
//   - make.go: one entry made present (through package present, which node
//     apply uses too), released, or found in place;
//   - pull.go: the pull worker: slots, timeout, backoff, credentials;
//   - archive.go: images imported from an archive instead of pulled;
//   - state.go: what the agent knows of each image, and the one function
//     through which every phase change passes;
//   - runtime.go: the runtime's image events and pull progress;
//   - nodeimageset_status.go: the status built from that state, and the
//     image filesystem's use.
//
// Pulls go through CRI, so that the runtime's mirrors and credentials apply;
// tags and pins go through cri.Store (containerd's API), and a runtime
// without one gets "unsupported by the runtime" in status instead of silence.
// Pulls run in the background, a bounded number at a time, with a timeout
// each and backoff with jitter between attempts; Reconcile never waits for
// one. A periodic resync and containerd's image events restore what someone
// else changed: an image removed, a pin taken off, a tag moved.
package nodeimageset
