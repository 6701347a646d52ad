//go:build tools

// Package tools records the etcd server the test ground builds.
package tools

import _ "go.etcd.io/etcd/server/v3"
