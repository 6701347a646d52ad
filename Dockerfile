# One image carries every prepull command (controller, agent, …), which is
# what an air-gapped install has to carry in.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) -t prepull .

# The build stage's image only runs the go command: the toolchain that
# compiles is the one named here, fetched and checked against the Go
# checksum database whatever that image holds, and every module is pinned
# by go.sum.
FROM golang:1.26 AS build
ENV GOTOOLCHAIN=go1.26.8
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/prepull ./cmd/prepull

# Nothing but the static binary: no base image to pin. It carries its own
# CA roots (golang.org/x/crypto/x509roots/fallback, pinned by go.sum), to
# reach registries and archive servers over TLS.
FROM scratch
COPY --from=build /out/prepull /prepull
USER 65532:65532
ENTRYPOINT ["/prepull"]
