# One image carries every prepull command (controller, agent, …), which is
# what an air-gapped install has to carry in.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) -t prepull .

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/prepull ./cmd/prepull

# A static binary needs nothing but CA certificates, to reach registries
# over TLS when the controller resolves tags.
FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/prepull /prepull
USER 65532:65532
ENTRYPOINT ["/prepull"]
