package cri

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrNoSpace means the node's image filesystem is full.
var ErrNoSpace = errors.New("no space left on the image filesystem")

// Error is a failed runtime call. It matches one sentinel with errors.Is and
// keeps the runtime's own message, which is what a user needs to read.
type Error struct {
	// Op is what was asked, e.g. "pull".
	Op string
	// Ref is the image reference the call was about, if any.
	Ref string
	// Kind is one of the package's sentinels, or nil when the error fits none.
	Kind error
	// Err is the runtime's error.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Op)
	if e.Ref != "" {
		b.WriteString(" ")
		b.WriteString(e.Ref)
	}
	b.WriteString(": ")
	if s, ok := status.FromError(e.Err); ok {
		b.WriteString(s.Message())
	} else {
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap lets errors.Is match both the sentinel and the runtime's error.
func (e *Error) Unwrap() []error {
	if e.Kind == nil {
		return []error{e.Err}
	}
	return []error{e.Kind, e.Err}
}

// wrapError classifies err, a runtime's answer to op on ref, into an *Error.
func wrapError(op, ref string, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Op: op, Ref: ref, Kind: classify(err), Err: err}
}

// messageKinds maps fragments of runtime messages to sentinels, in order. CRI
// has no structured pull errors: containerd reports a registry's refusal as
// codes.Unknown with the registry's words inside, so they are matched here.
var messageKinds = []struct {
	fragment string
	kind     error
}{
	{"401 unauthorized", ErrUnauthorized},
	{"403 forbidden", ErrUnauthorized},
	{"unauthorized", ErrUnauthorized},
	{"authorization failed", ErrUnauthorized},
	{"no space left on device", ErrNoSpace},
	{"not found", ErrNotFound},
	{"connection refused", ErrUnavailable},
	{"no such host", ErrUnavailable},
	{"no route to host", ErrUnavailable},
	{"network is unreachable", ErrUnavailable},
	{"i/o timeout", ErrUnavailable},
	{"connection reset", ErrUnavailable},
	// A registry that answers with a server error, or a transfer cut short.
	{"500 internal server error", ErrUnavailable},
	{"502 bad gateway", ErrUnavailable},
	{"503 service unavailable", ErrUnavailable},
	{"504 gateway timeout", ErrUnavailable},
	{"unexpected eof", ErrUnavailable},
	// The connection closed before an answer ("…: EOF").
	{": eof", ErrUnavailable},
	{"deadline exceeded", ErrTimeout},
}

func classify(err error) error {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return ErrTimeout
	case errors.Is(err, context.Canceled):
		return nil
	}
	msg := err.Error()
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.NotFound:
			return ErrNotFound
		case codes.Unavailable:
			return ErrUnavailable
		case codes.DeadlineExceeded:
			return ErrTimeout
		case codes.InvalidArgument:
			return ErrInvalid
		case codes.Unauthenticated, codes.PermissionDenied:
			return ErrUnauthorized
		case codes.Unimplemented:
			return ErrUnsupported
		case codes.Canceled:
			return nil
		}
		msg = s.Message()
	}
	msg = strings.ToLower(msg)
	for _, mk := range messageKinds {
		if strings.Contains(msg, mk.fragment) {
			return mk.kind
		}
	}
	return nil
}
