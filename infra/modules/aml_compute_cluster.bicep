// One Azure ML compute cluster, sized by one entry of infra/compute.json (the single home of those values).

@description('Short name shared by every resource of this deployment; prefixes the cluster description.')
param baseName string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Name of the Azure ML workspace the cluster belongs to.')
param workspaceName string

@description('One cluster entry of infra/compute.json: name, vm_size, min_nodes, max_nodes, idle_seconds_before_scaledown, tier.')
param cluster object

@description('Resource id of the user-assigned identity the cluster\'s jobs run as.')
param identityId string

@description('What the cluster is for, shown in the studio.')
param purpose string

resource workspace 'Microsoft.MachineLearningServices/workspaces@2025-09-01' existing = {
  name: workspaceName
}

resource computeCluster 'Microsoft.MachineLearningServices/workspaces/computes@2025-09-01' = {
  parent: workspace
  name: cluster.name
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    computeType: 'AmlCompute'
    computeLocation: location
    description: '${baseName}: ${purpose}'
    disableLocalAuth: true
    properties: {
      vmSize: cluster.vm_size
      vmPriority: cluster.tier
      osType: 'Linux'
      scaleSettings: {
        minNodeCount: cluster.min_nodes
        maxNodeCount: cluster.max_nodes
        // compute.json counts seconds; ARM wants an ISO 8601 duration (120 -> PT120S).
        nodeIdleTimeBeforeScaleDown: 'PT${cluster.idle_seconds_before_scaledown}S'
      }
      // No SSH: nodes are reached through job logs only.
      remoteLoginPortPublicAccess: 'Disabled'
      // Without a VNet the nodes need public IPs to reach the Azure ML control plane.
      enableNodePublicIp: true
      isolatedNetwork: false
    }
  }
}

output id string = computeCluster.id
output name string = computeCluster.name
