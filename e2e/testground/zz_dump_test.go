package testground

import (
	"context"
	"fmt"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func TestZZDump(t *testing.T) {
	c := StartContainerd(t)
	conn, err := grpc.NewClient("unix://"+c.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil { t.Fatal(err) }
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	resp, err := rs.Status(context.Background(), &runtimeapi.StatusRequest{Verbose: true})
	if err != nil { t.Fatal(err) }
	for k, v := range resp.Info { fmt.Printf("== %s\n%s\n", k, v) }
	is := runtimeapi.NewImageServiceClient(conn)
	fs, err := is.ImageFsInfo(context.Background(), &runtimeapi.ImageFsInfoRequest{})
	fmt.Println(fs, err)
}
