// Package prepulllist reconciles PrePullLists: it selects the nodes, resolves
// each tag to one digest for every node, composes each node's NodeImageSet
// spec from every list that selects the node, paces the rollout, and
// aggregates what the agents report into the list's status.
//
// The controller writes every NodeImageSet spec and every PrePullList status,
// and nothing else of either: agents write NodeImageSet status. Lists share a
// NodeImageSet entry per digest, each list recorded as an owner with its own
// settings, so that one list going never takes away what another wants.
package prepulllist
