//go:build tools

// Package tools pins ecr-credential-provider, a kubelet credential provider
// plugin the credprovider tests run against a stand-in of ECR on loopback
// (hack/build-tool.sh ecr-credential-provider).
package tools

import _ "k8s.io/cloud-provider-aws/cmd/ecr-credential-provider"
