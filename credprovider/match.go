package credprovider

import (
	"fmt"
	"net/url"
	"path"
	"strings"
)

// pattern is a matchImages entry (or a key of a plugin's auth): a host
// whose dot-separated parts may hold globs, an optional port, an optional
// path.
type pattern struct {
	parts      []string
	port, path string
}

func parsePattern(s string) (pattern, error) {
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return pattern{}, fmt.Errorf("%q: %w", s, err)
		}
		s = u.Host + u.Path
	}
	hostport, p, _ := strings.Cut(s, "/")
	host, port := hostport, ""
	if i := strings.LastIndexByte(hostport, ':'); i >= 0 {
		host, port = hostport[:i], hostport[i+1:]
		if strings.ContainsAny(port, "*?[") {
			return pattern{}, fmt.Errorf("%q: a port may not hold a glob", s)
		}
	}
	if host == "" {
		return pattern{}, fmt.Errorf("%q: no host", s)
	}
	if strings.ContainsAny(p, "*?[") {
		return pattern{}, fmt.Errorf("%q: a path may not hold a glob", s)
	}
	parts := strings.Split(host, ".")
	for _, part := range parts {
		if _, err := path.Match(part, ""); err != nil {
			return pattern{}, fmt.Errorf("%q: %w", s, err)
		}
	}
	return pattern{parts: parts, port: port, path: p}, nil
}

// matches reports whether repo ("host[:port]/path", as imageref names a
// repository) matches the pattern s by the kubelet's rules: as many host
// parts, each matching its glob (a glob matches within one part); the same
// port (none matches none); the pattern's path, if it has one, a prefix of
// repo's.
func matches(s, repo string) bool {
	pat, err := parsePattern(s)
	if err != nil {
		return false
	}
	hostport, p, _ := strings.Cut(repo, "/")
	host, port := hostport, ""
	if i := strings.LastIndexByte(hostport, ':'); i >= 0 {
		host, port = hostport[:i], hostport[i+1:]
	}
	parts := strings.Split(host, ".")
	if len(parts) != len(pat.parts) {
		return false
	}
	for i, g := range pat.parts {
		if ok, _ := path.Match(g, parts[i]); !ok {
			return false
		}
	}
	if pat.port != port {
		return false
	}
	return strings.HasPrefix(p, pat.path)
}

func matchesAny(patterns []string, repo string) bool {
	for _, s := range patterns {
		if matches(s, repo) {
			return true
		}
	}
	return false
}
