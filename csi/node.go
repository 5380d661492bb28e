package csi

import (
	"context"
	"errors"
	"log/slog"
	"strconv"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/keywarden/keywarden/internal/grpcx"
)

// Server serves the CSI Identity and Node services of a Driver.
type Server struct {
	csipb.UnimplementedIdentityServer
	csipb.UnimplementedNodeServer
	d *Driver
}

var (
	_ csipb.IdentityServer = (*Server)(nil)
	_ csipb.NodeServer     = (*Server)(nil)
)

// NewServer returns the gRPC services for d.
func NewServer(d *Driver) *Server { return &Server{d: d} }

// Register adds the Identity and Node services to s.
func (s *Server) Register(g *grpc.Server) {
	csipb.RegisterIdentityServer(g, s)
	csipb.RegisterNodeServer(g, s)
}

// NewGRPCServer returns a gRPC server with the CSI services behind the shared logging and
// panic-recovery interceptors: each call's outcome is logged without its request (the volume
// context carries the pod's token), and a panicking handler answers Internal while the server
// keeps serving the node's other volumes.
func NewGRPCServer(d *Driver) *grpc.Server {
	g := grpc.NewServer(
		grpc.ChainUnaryInterceptor(grpcx.LogUnary(d.log, nil), grpcx.RecoverUnary(d.log)),
		grpc.ChainStreamInterceptor(grpcx.LogStream(d.log, nil), grpcx.RecoverStream(d.log)),
	)
	NewServer(d).Register(g)
	return g
}

// toStatus is the driver's one mapping to gRPC status codes: its own errors here, the
// broker's through grpcx.ToStatus.
func toStatus(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrAlreadyExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, ErrInvalidRequest):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrVolumeFull):
		return status.Error(codes.ResourceExhausted, "the volume's files do not fit its tmpfs: raise csi.tmpfsSize or deliver fewer keys")
	}
	return grpcx.ToStatus(err)
}

// GetPluginInfo implements csi.IdentityServer.
func (s *Server) GetPluginInfo(context.Context, *csipb.GetPluginInfoRequest) (*csipb.GetPluginInfoResponse, error) {
	v := s.d.cfg.Version
	if v == "" {
		v = "dev"
	}
	return &csipb.GetPluginInfoResponse{Name: s.d.cfg.DriverName, VendorVersion: v}, nil
}

// GetPluginCapabilities implements csi.IdentityServer: a node-only plugin has none.
func (s *Server) GetPluginCapabilities(context.Context, *csipb.GetPluginCapabilitiesRequest) (*csipb.GetPluginCapabilitiesResponse, error) {
	return &csipb.GetPluginCapabilitiesResponse{}, nil
}

// Probe implements csi.IdentityServer.
func (s *Server) Probe(context.Context, *csipb.ProbeRequest) (*csipb.ProbeResponse, error) {
	return &csipb.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// NodeGetInfo implements csi.NodeServer.
func (s *Server) NodeGetInfo(context.Context, *csipb.NodeGetInfoRequest) (*csipb.NodeGetInfoResponse, error) {
	return &csipb.NodeGetInfoResponse{NodeId: s.d.cfg.NodeID}, nil
}

// NodeGetCapabilities implements csi.NodeServer: VOLUME_MOUNT_GROUP, so kubelet passes the
// pod's fsGroup as volume_mount_group.
func (s *Server) NodeGetCapabilities(context.Context, *csipb.NodeGetCapabilitiesRequest) (*csipb.NodeGetCapabilitiesResponse, error) {
	return &csipb.NodeGetCapabilitiesResponse{Capabilities: []*csipb.NodeServiceCapability{{
		Type: &csipb.NodeServiceCapability_Rpc{Rpc: &csipb.NodeServiceCapability_RPC{Type: csipb.NodeServiceCapability_RPC_VOLUME_MOUNT_GROUP}},
	}}}, nil
}

// NodePublishVolume implements csi.NodeServer.
func (s *Server) NodePublishVolume(ctx context.Context, r *csipb.NodePublishVolumeRequest) (*csipb.NodePublishVolumeResponse, error) {
	switch {
	case r.GetVolumeId() == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case r.GetTargetPath() == "":
		return nil, status.Error(codes.InvalidArgument, "target_path is required")
	case r.GetVolumeCapability() == nil:
		return nil, status.Error(codes.InvalidArgument, "volume_capability is required")
	case r.GetVolumeCapability().GetMount() == nil:
		return nil, status.Error(codes.InvalidArgument, "only mount volumes are supported, not block")
	case !r.GetReadonly():
		return nil, status.Error(codes.InvalidArgument, "the volume must be read-only: set readOnly: true on the pod's csi volume (the daemon writes its files; the pod only reads them)")
	case multiNodeWriter(r.GetVolumeCapability().GetAccessMode().GetMode()):
		return nil, status.Error(codes.InvalidArgument, "a multi-node writer access mode is not supported: the volume is node-local and read-only")
	}
	gid := -1
	if g := r.GetVolumeCapability().GetMount().GetVolumeMountGroup(); g != "" {
		n, err := strconv.Atoi(g)
		if err != nil || n < 0 || n > 1<<31-1 {
			return nil, status.Error(codes.InvalidArgument, "volume_mount_group must be a numeric group ID")
		}
		gid = n
	}
	err := s.d.Publish(ctx, PublishRequest{VolumeID: r.GetVolumeId(), TargetPath: r.GetTargetPath(), VolumeContext: r.GetVolumeContext(), GID: gid})
	if err != nil {
		return nil, toStatus(err)
	}
	return &csipb.NodePublishVolumeResponse{}, nil
}

// multiNodeWriter reports whether m lets several nodes write. The single-node writer modes are
// not refused: kubelet sends SINGLE_NODE_WRITER for every inline volume whatever its readOnly
// says (pkg/volume/csi/csi_mounter.go), so readonly is the request's signal, and the mount
// is read-only for the pod in any case.
func multiNodeWriter(m csipb.VolumeCapability_AccessMode_Mode) bool {
	return m == csipb.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER || m == csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
}

// NodeUnpublishVolume implements csi.NodeServer.
func (s *Server) NodeUnpublishVolume(ctx context.Context, r *csipb.NodeUnpublishVolumeRequest) (*csipb.NodeUnpublishVolumeResponse, error) {
	switch {
	case r.GetVolumeId() == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case r.GetTargetPath() == "":
		return nil, status.Error(codes.InvalidArgument, "target_path is required")
	}
	if err := s.d.Unpublish(ctx, r.GetVolumeId(), r.GetTargetPath()); err != nil {
		s.d.log.Error("unpublish failed", slog.String("volume_id", r.GetVolumeId()), slog.Any("error", err))
		return nil, status.Error(codes.Internal, "the volume could not be removed; kubelet will retry")
	}
	return &csipb.NodeUnpublishVolumeResponse{}, nil
}
