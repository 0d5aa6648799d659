//! The public handles can be shared across threads.

fn send_sync<T: Send + Sync>() {}

#[test]
fn handles_are_send_and_sync() {
    send_sync::<pccl::Communicator>();
    send_sync::<pccl::MasterNode>();
    send_sync::<pccl::AsyncReduce<pccl::OwnedBuffers>>();
    send_sync::<pccl::Error>();
}
