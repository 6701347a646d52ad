//go:build tools

// Package tools pins helm, which the chart's tests and the local cluster's
// Helm install run (hack/build-tool.sh helm).
package tools

import _ "helm.sh/helm/v3/cmd/helm"
