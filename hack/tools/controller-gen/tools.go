//go:build tools

// Package tools records controller-gen, which generates the CRDs, RBAC and
// deepcopy code from the API types.
package tools

import _ "sigs.k8s.io/controller-tools/cmd/controller-gen"
