// What the compute identity may do. Role assignments are not tracked resources (no location, no tags).

@description('Short name shared by every resource of this deployment; shown in the assignments\' description.')
param baseName string

@description('Principal (object) id of the user-assigned identity the clusters run as.')
param principalId string

@description('Name of the storage account that holds the training data.')
param storageAccountName string

@description('Name of the container registry that holds the environment images.')
param containerRegistryName string

// Built-in role definition ids: the same in every tenant.
var contributorRoleId = 'b24988ac-6180-42a0-ab88-20f7382dd24c'
var storageBlobDataReaderRoleId = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
var acrPullRoleId = '7f951dda-4ed3-4680-a7ca-43fe172d538d'

resource storageAccount 'Microsoft.Storage/storageAccounts@2024-01-01' existing = {
  name: storageAccountName
}

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = {
  name: containerRegistryName
}

// No scope: applies at the deployment's target scope, the resource group. Jobs running as the identity
// register models, log to MLflow and update endpoints in the workspace, all control-plane writes.
resource contributorOnResourceGroup 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, principalId, contributorRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', contributorRoleId)
    principalId: principalId
    // Set explicitly: ARM then skips the directory lookup that fails for a just-created identity.
    principalType: 'ServicePrincipal'
    description: '${baseName}: jobs manage Azure ML assets in this resource group'
  }
}

// Contributor is control plane only; reading blobs with Entra ID needs a data-plane role.
resource blobReaderOnStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, principalId, storageBlobDataReaderRoleId)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReaderRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: '${baseName}: jobs read training data with their identity'
  }
}

// The registry has no admin user, so the clusters pull environment images with this identity.
resource acrPullOnRegistry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, principalId, acrPullRoleId)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPullRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: '${baseName}: clusters pull environment images'
  }
}

output ids array = [
  contributorOnResourceGroup.id
  blobReaderOnStorage.id
  acrPullOnRegistry.id
]
