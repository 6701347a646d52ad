// Package prepulllist reconciles PrePullLists: it selects the nodes, reads
// each tag's one digest for the cluster from its TagResolution (resolving
// it when due), composes each node's NodeImageSet spec from every list that
// selects the node, paces the rollout, and aggregates what the agents report
// into the list's status.
//
// The controller writes every NodeImageSet spec, every TagResolution and
// every PrePullList status, and nothing else of them: agents write
// NodeImageSet status. Lists share a NodeImageSet entry per digest, each
// list recorded as an owner with the tags it wants, so that one list going
// never takes away what another wants; a list's own settings stay in the
// list, where the agent reads them.
package prepulllist
