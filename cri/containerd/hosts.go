package containerd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/errdefs"

	"prepull.io/prepull/cri"
)

// hostsMaxAge is how long a registry's hosts, as configured from its
// hosts.toml, are kept when the file shows no change: certificates it names
// are read again at least this often.
const hostsMaxAge = time.Minute

// maxHosts bounds the hosts kept; past it, all are made afresh.
const maxHosts = 256

// hostsKey is one registry host as reached with one set of credentials.
type hostsKey struct {
	host string
	auth cri.Auth
}

// configured is what config.ConfigureHosts made for one hostsKey: clients
// whose connections stay open between reads, and an authorizer that keeps
// the registry's tokens.
type configured struct {
	hosts []docker.RegistryHost
	stamp string
	made  time.Time
}

// hostsCache keeps the hosts each registry is reached through, so that the
// many small reads the agent makes of one registry (a pull's size before
// each pull, a tag's digest, signatures) reuse connections instead of
// dialling, and reading hosts.toml, for every one.
type hostsCache struct {
	mu sync.Mutex
	m  map[hostsKey]*configured
}

// resolver reaches registries as containerd's CRI plugin does: through its
// hosts.toml directory, with auth.
func (s *Store) resolver(ctx context.Context, auth *cri.Auth) remotes.Resolver {
	a := authOf(auth)
	return docker.NewResolver(docker.ResolverOptions{Hosts: func(host string) ([]docker.RegistryHost, error) {
		return s.hosts.get(ctx, hostsKey{host: host, auth: a}, s.hostsDir)
	}})
}

// authOf is auth as a hosts key holds it: none when nil.
func authOf(auth *cri.Auth) cri.Auth {
	if auth == nil {
		return cri.Auth{}
	}
	return *auth
}

// get returns k's hosts, configured again when hosts.toml changed (or
// appeared, or went) or they are older than hostsMaxAge.
func (c *hostsCache) get(ctx context.Context, k hostsKey, root string) ([]docker.RegistryHost, error) {
	dir, stamp, err := hostsStamp(root, k.host)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if h, ok := c.m[k]; ok && h.stamp == stamp && time.Since(h.made) < hostsMaxAge {
		return h.hosts, nil
	}
	auth := k.auth
	hosts, err := config.ConfigureHosts(ctx, config.HostOptions{
		Credentials: credentials(&auth),
		HostDir:     func(string) (string, error) { return dir, nil },
	})(k.host)
	if err != nil {
		return nil, err
	}
	if c.m == nil || len(c.m) >= maxHosts {
		c.m = map[hostsKey]*configured{}
	}
	c.m[k] = &configured{hosts: hosts, stamp: stamp, made: time.Now()}
	return hosts, nil
}

// hostsStamp finds host's directory under root, as the CRI plugin does
// (the host's own, else _default), and a stamp of its hosts.toml that
// changes when the file does.
func hostsStamp(root, host string) (dir, stamp string, err error) {
	if root == "" {
		return "", "", nil
	}
	switch dir, err = config.HostDirFromRoot(root)(host); {
	case errdefs.IsNotFound(err):
		return "", "", nil
	case err != nil:
		return "", "", err
	}
	fi, err := os.Stat(filepath.Join(dir, "hosts.toml"))
	if err != nil {
		return dir, dir, nil
	}
	return dir, fmt.Sprintf("%s %d %d", dir, fi.Size(), fi.ModTime().UnixNano()), nil
}
