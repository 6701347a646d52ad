package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/distribution/reference"
	"k8s.io/apimachinery/pkg/util/yaml"
	sigyaml "sigs.k8s.io/yaml"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// readLists reads the PrePullLists in files ("-" is stdin), several YAML
// documents each. It refuses any other kind, an unknown field, a list
// without images and an image that is not a reference, naming the file, the
// list and the entry. A list without a namespace gets "default", as kubectl
// would give it.
func readLists(files []string, stdin io.Reader) ([]prepullv1.PrePullList, error) {
	if len(files) == 0 {
		return nil, errors.New("-f: give at least one file of PrePullLists")
	}
	var lists []prepullv1.PrePullList
	var errs []error
	for _, name := range files {
		var data []byte
		var err error
		if name == "-" {
			data, err = io.ReadAll(stdin)
		} else {
			data, err = os.ReadFile(name)
		}
		if err != nil {
			return nil, err
		}
		dec := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for doc := 1; ; doc++ {
			raw, err := dec.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if len(bytes.TrimSpace(raw)) == 0 || isComment(raw) {
				continue
			}
			l, err := decodeList(raw)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: document %d: %w", name, doc, err))
				continue
			}
			lists = append(lists, *l)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if len(lists) == 0 {
		return nil, fmt.Errorf("%v: no PrePullList found", files)
	}
	return lists, nil
}

func decodeList(raw []byte) (*prepullv1.PrePullList, error) {
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := sigyaml.Unmarshal(raw, &meta); err != nil {
		return nil, err
	}
	if meta.APIVersion != prepullv1.GroupVersion.String() || meta.Kind != "PrePullList" {
		return nil, fmt.Errorf("%s %s is not a %s PrePullList", meta.APIVersion, meta.Kind, prepullv1.GroupVersion)
	}
	var l prepullv1.PrePullList
	if err := sigyaml.UnmarshalStrict(raw, &l); err != nil {
		return nil, err
	}
	if l.Name == "" {
		return nil, errors.New("PrePullList: metadata.name is required")
	}
	if l.Namespace == "" {
		l.Namespace = "default"
	}
	if len(l.Spec.Images) == 0 {
		return nil, fmt.Errorf("PrePullList %s/%s: spec.images: at least one image is required", l.Namespace, l.Name)
	}
	var errs []error
	for i, img := range l.Spec.Images {
		if _, err := reference.ParseNormalizedNamed(img.Image); err != nil {
			errs = append(errs, fmt.Errorf("PrePullList %s/%s: spec.images[%d].image %q: %w", l.Namespace, l.Name, i, img.Image, err))
		}
	}
	return &l, errors.Join(errs...)
}

func isComment(raw []byte) bool {
	for _, line := range bytes.Split(raw, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) > 0 && line[0] != '#' {
			return false
		}
	}
	return true
}
