# The KubeRay operator (RayService controller, in-tree Ray autoscaler support), pinned.
resource "helm_release" "kuberay_operator" {
  name             = "kuberay-operator"
  repository       = "https://ray-project.github.io/kuberay-helm/"
  chart            = "kuberay-operator"
  version          = var.kuberay_version
  namespace        = "kuberay-system"
  create_namespace = true
  wait             = true

  # NewClusterWithIncrementalUpgrade (chart value ray.upgradeStrategy) needs this gate. Only set when wanted: a
  # featureGates list given here replaces the chart's default list.
  dynamic "set" {
    for_each = var.kuberay_incremental_upgrade ? { name = "RayServiceIncrementalUpgrade", enabled = "true" } : {}
    content {
      name  = "featureGates[0].${set.key}"
      value = set.value
    }
  }

  depends_on = [google_container_node_pool.cpu]
}
