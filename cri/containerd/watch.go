package containerd

import (
	"context"

	eventsapi "github.com/containerd/containerd/api/events"
	"github.com/containerd/typeurl/v2"

	"prepull.io/prepull/cri"
)

var _ cri.ImageWatcher = (*Store)(nil)

// WatchImages sends the name of every image record of the CRI namespace that
// is created, updated or deleted.
func (s *Store) WatchImages(ctx context.Context) (<-chan string, error) {
	envelopes, errs := s.client.Subscribe(ctx, `namespace=="`+Namespace+`",topic~="^/images/"`)
	out := make(chan string, 64)
	go func() {
		defer close(out)
		for {
			select {
			case <-ctx.Done():
				return
			case <-errs:
				return
			case env := <-envelopes:
				if env == nil || env.Event == nil {
					continue
				}
				ev, err := typeurl.UnmarshalAny(env.Event)
				if err != nil {
					continue
				}
				var name string
				switch e := ev.(type) {
				case *eventsapi.ImageCreate:
					name = e.Name
				case *eventsapi.ImageUpdate:
					name = e.Name
				case *eventsapi.ImageDelete:
					name = e.Name
				default:
					continue
				}
				select {
				case out <- name:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}
